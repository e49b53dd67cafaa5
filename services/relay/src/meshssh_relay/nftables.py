"""The kernel redirect: one tagged nftables rule that sends mesh TCP 22 to sshd's port.

The relay owns a table of its own (``inet meshssh-relay-<peer-id>``) holding one NAT chain on
the prerouting hook (priority dstnat) and one rule, as NetBird does (netbird-ssh.md §1)::

    iifname "<mesh-if>" ip daddr <mesh-ip> tcp dport 22 counter dnat ip to <mesh-ip>:22022
        comment "meshssh-relay:redirect:<mesh-ip>:22:22022"

Only traffic arriving on the mesh interface for the mesh address is redirected, so the host's
own sshd stays reachable elsewhere; sshd on 22022 sees the original source and applies the
ACL itself (the map carries the 22022 copy of every rule that covers 22).

Installing and removing are idempotent and atomic (each is one ``nft -f`` transaction):
:meth:`NftRedirect.install` leaves the rule in place when exactly the tagged rule is there,
and otherwise replaces the whole table, so a crash in any state (a stale rule, a duplicate,
a half-made table) is recovered by the next start; :meth:`NftRedirect.remove` deletes the
table whether or not it exists.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import shutil
from typing import Any

from meshssh_common.errors import ConfigError

__all__ = ["NftRedirect", "nft_available"]

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def nft_available() -> bool:
    """Whether the ``nft`` tool is installed."""
    return shutil.which("nft") is not None


class NftRedirect:
    """One redirect rule in a table of its own (see the module docstring).

    Args:
        table: the table name (owned entirely by this relay).
        interface: the mesh interface the traffic must arrive on.
        mesh_ip: the mesh address clients dial.
        port: the port clients dial (22).
        to_port: sshd's port (22022).

    Raises:
        ConfigError: a bad interface name or address.
    """

    def __init__(self, table: str, interface: str, mesh_ip: str, port: int, to_port: int) -> None:
        if not _IFNAME.fullmatch(interface):  # "$" alone would admit a final newline
            raise ConfigError("--mesh-interface", f"not an interface name: {interface!r}")
        try:
            address = ipaddress.ip_address(mesh_ip)
        except ValueError as e:
            raise ConfigError("--listen", f"nftables mode needs an IP address: {e}") from e
        if address.is_unspecified:
            raise ConfigError("--listen", "nftables mode needs the mesh address, not 0.0.0.0")
        self.table = table
        self.interface = interface
        self.mesh_ip = str(address)
        self.port = port
        self.to_port = to_port
        self.family = "ip" if address.version == 4 else "ip6"
        self.tag = f"meshssh-relay:redirect:{self.mesh_ip}:{port}:{to_port}"

    def rule_text(self) -> str:
        """The rule, as nft writes it."""
        target = self.mesh_ip if self.family == "ip" else f"[{self.mesh_ip}]"
        return (
            f'iifname "{self.interface}" {self.family} daddr {self.mesh_ip} '
            f"tcp dport {self.port} counter dnat {self.family} to {target}:{self.to_port} "
            f'comment "{self.tag}"'
        )

    def _replace_script(self) -> str:
        return (
            f"add table inet {self.table}\n"
            f"delete table inet {self.table}\n"
            f"add table inet {self.table}\n"
            f"add chain inet {self.table} prerouting "
            "{ type nat hook prerouting priority dstnat; policy accept; }\n"
            f"add rule inet {self.table} prerouting {self.rule_text()}\n"
        )

    def _remove_script(self) -> str:
        return f"add table inet {self.table}\ndelete table inet {self.table}\n"

    async def tagged_rules(self) -> list[dict[str, Any]]:
        """The rules in this relay's table (empty when the table does not exist).

        Raises:
            ConfigError: nft is missing or not permitted.
        """
        code, out, err = await _nft("-j", "list", "table", "inet", self.table)
        if code != 0:
            if "No such file or directory" in err or "does not exist" in err:
                return []
            raise _nft_error(err)
        rules = []
        for item in json.loads(out or "{}").get("nftables", []):
            if "rule" in item:
                rules.append(item["rule"])
        return rules

    async def installed(self) -> bool:
        """Whether exactly this relay's tagged rule is in place."""
        rules = await self.tagged_rules()
        return len(rules) == 1 and rules[0].get("comment") == self.tag

    async def install(self) -> bool:
        """Make the rule present exactly once; returns True when something had to change.

        Raises:
            ConfigError: nft is missing, not permitted, or refused the rule.
        """
        if await self.installed():
            return False
        code, _, err = await _nft("-f", "-", stdin=self._replace_script())
        if code != 0:
            raise _nft_error(err)
        return True

    async def remove(self) -> None:
        """Remove the rule and the table (nothing happens when they are already gone).

        Raises:
            ConfigError: nft is missing or not permitted.
        """
        code, _, err = await _nft("-f", "-", stdin=self._remove_script())
        if code != 0:
            raise _nft_error(err)


def _nft_error(stderr: str) -> ConfigError:
    text = stderr.strip().splitlines()[0] if stderr.strip() else "nft failed"
    if "Operation not permitted" in stderr:
        text = "not permitted: the nftables mode needs root (CAP_NET_ADMIN); use --mode proxy"
    return ConfigError("--mode", f"nftables: {text}")


async def _nft(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    exe = shutil.which("nft")
    if exe is None:
        raise ConfigError("--mode", "nftables mode needs the nft tool (apt-get install nftables)")
    proc = await asyncio.create_subprocess_exec(
        exe,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(10):
            out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    except BaseException as e:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if isinstance(e, TimeoutError):
            raise ConfigError("--mode", "nft did not answer within 10 s") from e
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
