"""Drive the real OpenSSH client tools (ssh, scp, sftp) from tests, with temporary files.

Everything lives under a directory the test owns (``tmp_path``): an Ed25519 client key
(mode 0600), a known_hosts file, and an ``ssh_config`` the test may extend; nothing reads the
user's own ``~/.ssh``. Every run has a timeout.

Example::

    client = OpenSSH(tmp_path)
    client.trust("127.0.0.1", port, server_public_key_line)
    result = await client.ssh("-p", str(port), "alice@127.0.0.1", "exit 7")
    assert result.returncode == 7
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import asyncssh

from meshssh_testkit.process import RunResult, run_command

__all__ = ["OpenSSH", "RunResult", "openssh_available"]  # RunResult: from process


def openssh_available() -> bool:
    """True when ssh, scp and sftp are all on PATH."""
    return all(shutil.which(t) for t in ("ssh", "scp", "sftp"))


class OpenSSH:
    """OpenSSH client tools bound to one temporary identity, known_hosts and config."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.key_path = root / "id_ed25519"
        key = asyncssh.generate_private_key("ssh-ed25519")
        self.key_path.write_bytes(key.export_private_key())
        self.key_path.chmod(0o600)
        self.public_key = key.export_public_key().decode().strip()
        (root / "id_ed25519.pub").write_text(self.public_key + "\n")
        self.known_hosts = root / "known_hosts"
        self.known_hosts.touch()
        self.config = root / "ssh_config"
        self.config.write_text("")

    def trust(self, host: str, port: int, host_key_line: str) -> None:
        """Add ``[host]:port <key>`` to known_hosts."""
        with self.known_hosts.open("a") as f:
            f.write(f"[{host}]:{port} {host_key_line.strip()}\n")

    def base_options(self) -> list[str]:
        """Options that make a run non-interactive, isolated and strict."""
        return [
            "-F",
            str(self.config),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
            "-i",
            str(self.key_path),
        ]

    async def run(
        self,
        tool: str,
        *args: str,
        input: bytes | None = None,
        timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
        options: Sequence[str] | None = None,
    ) -> RunResult:
        """Run ``tool`` (ssh, scp, sftp) with the base options, then ``args``.

        Raises:
            CommandTimeout: the tool did not finish within ``timeout`` (it is killed).
        """
        argv = [tool, *(self.base_options() if options is None else options), *args]
        return await run_command(*argv, input=input, env=env or {}, cwd=self.root, timeout=timeout)

    async def ssh(self, *args: str, **kw: object) -> RunResult:
        """Run ``ssh`` (see :meth:`run`)."""
        return await self.run("ssh", *args, **kw)  # type: ignore[arg-type]
