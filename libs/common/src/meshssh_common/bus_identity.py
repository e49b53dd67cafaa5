"""A peer's NATS identity: its user key pair and the creds file made from registration.

Used by every process that registers as a peer (the agent, the gateway). The key pair is made
on the peer the first time it starts; its seed stays in its seed file (``nats.nk``, 0600) and is
never sent anywhere: registration carries only the public key (``RegisterRequest.nats_key``),
and management answers with a user JWT for it (``RegisterReply.nats_jwt``).
:meth:`BusIdentity.store` checks that JWT (it must name this key) and writes the creds file
(``nats.creds``, 0600, the standard creds layout), which the peer's processes connect with.
When the stored peer credential was refused and the peer registers afresh with the setup key,
:meth:`BusIdentity.replace` makes a new key pair (management revoked the old one).

Example::

    identity = BusIdentity(state_dir / "nats.nk", state_dir / "nats.creds")
    req = RegisterRequest(..., nats_key=identity.key.public)
    expires_at = identity.store(reply.nats_jwt)
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from meshssh_common.errors import WireError
from meshssh_common.logs import BoundLogger
from meshssh_common.nats_jwt import Key, Prefix, decode_claims, key_from_seed, new_key, write_creds
from meshssh_common.secret_files import write_secret_file

__all__ = ["BusIdentity"]


class BusIdentity:
    """The NATS key pair and creds file of one peer (see the module docstring).

    Args:
        seed_path: the seed file (made 0600 the first time).
        creds_path: the creds file written from each registration.
        log: told when an unusable seed file is replaced.
    """

    def __init__(
        self, seed_path: Path, creds_path: Path, *, log: BoundLogger | None = None
    ) -> None:
        self.seed_path = seed_path
        self.creds_path = creds_path
        self._log = log
        self._key: Key | None = None

    @property
    def key(self) -> Key:
        """The key pair: read from ``nats.nk``, made (and written 0600) the first time."""
        if self._key is None:
            self._key = self._load() or self.replace()
        return self._key

    def _load(self) -> Key | None:
        try:
            return key_from_seed(self.seed_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError) as e:
            if self._log is not None:
                self._log.warning(
                    "NATS seed file unusable; making a new key pair",
                    extra={"path": str(self.seed_path), "error": str(e)},
                )
            return None

    def replace(self) -> Key:
        """A new key pair, written to ``nats.nk`` (the creds file of the old one goes)."""
        key = new_key(Prefix.USER)
        write_secret_file(self.seed_path, key.seed + "\n")
        self.forget()
        self._key = key
        return key

    def store(self, jwt: str) -> float | None:
        """Check ``jwt`` and write the creds file with it; returns its expiry (None: never).

        Raises:
            WireError: not a valid user JWT for this peer's key.
        """
        try:
            claims = decode_claims(jwt)
        except ValueError as e:
            raise WireError(f"management sent an invalid NATS JWT: {e}") from e
        if claims.get("sub") != self.key.public:
            raise WireError("management sent a NATS JWT for another key")
        write_creds(self.creds_path, jwt, self.key.seed)
        exp = claims.get("exp")
        return float(exp) if isinstance(exp, int | float) else None

    def forget(self) -> None:
        """Remove the creds file (no usable JWT for the current key)."""
        with contextlib.suppress(FileNotFoundError):
            Path(self.creds_path).unlink()
