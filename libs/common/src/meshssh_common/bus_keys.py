"""The bus's keys: the operator, the MESHSSH and system accounts, and the service identities.

``meshssh-policy init --dir DIR`` calls :meth:`BusKeys.create` once per deployment; ``make run``
and the tests' nats-server fixture do too. The directory holds (mode 0700, files 0600):

- ``operator.jwt``/``operator.nk``, ``account.jwt``/``account.nk``,
  ``system-account.jwt``/``system-account.nk``: identities (keep the seeds offline);
- ``operator-signing.nk`` (signs account JWTs: revocations) and ``account-signing.nk`` (signs
  user JWTs: peers), which policy holds;
- ``system.creds`` (a system-account user: claim updates), ``policy.creds``, ``authn.creds``,
  ``admin.creds`` (everything in MESHSSH: operators and tests);
- ``nats-auth.conf`` (operator, system account, preloaded account JWTs: include it);
- with ``tls_hosts``: ``ca.crt``, ``ca.key``, ``server.crt``, ``server.key``.

Example::

    keys = BusKeys.create(tmp / "bus", tls_hosts=("127.0.0.1",))
    conf = keys.server_config(port=4222, store=tmp / "js", resolver=tmp / "jwt", tls=True)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from meshssh_common.bus_permissions import (
    Permissions,
    admin_permissions,
    authn_permissions,
    inbox_prefix,
    policy_permissions,
)
from meshssh_common.nats_jwt import (
    Key,
    Prefix,
    account_jwt,
    key_from_seed,
    new_key,
    operator_jwt,
    user_jwt,
    write_creds,
)
from meshssh_common.secret_files import write_secret_file
from meshssh_common.tls_files import write_tls_files

__all__ = ["ACCOUNT_NAME", "SERVICE_ROLES", "BusKeys", "claims_update_subject"]

ACCOUNT_NAME = "MESHSSH"
SERVICE_ROLES = ("policy", "authn", "admin")
_ROLE_PERMISSIONS = {
    "policy": policy_permissions,
    "authn": authn_permissions,
}


def claims_update_subject(account: str) -> str:
    """Where a system user sends an account JWT to update a running server."""
    return f"$SYS.REQ.ACCOUNT.{account}.CLAIMS.UPDATE"


def _permissions(role: str, public: str) -> Permissions:
    make = _ROLE_PERMISSIONS.get(role)
    return make(inbox_prefix(public)) if make is not None else admin_permissions()


def _seed(path: Path) -> Key:
    return key_from_seed(path.read_text())


@dataclass(frozen=True)
class BusKeys:
    """A bus directory (see the module docstring)."""

    dir: Path
    operator_signing: Key
    account: str  # the MESHSSH account's public key
    account_signing: Key
    system_account: str

    @classmethod
    def create(cls, directory: Path, *, tls_hosts: Iterable[str] = ()) -> BusKeys:
        """Make every key and credential in ``directory`` (which must not hold keys yet).

        Raises:
            FileExistsError: ``directory`` already holds an operator.
        """
        if (directory / "operator.jwt").exists():
            raise FileExistsError(f"{directory} already holds bus keys")
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.chmod(0o700)
        op, op_signing = new_key(Prefix.OPERATOR), new_key(Prefix.OPERATOR)
        acct, acct_signing = new_key(Prefix.ACCOUNT), new_key(Prefix.ACCOUNT)
        sys_acct, sys_user = new_key(Prefix.ACCOUNT), new_key(Prefix.USER)
        for name, key in {
            "operator.nk": op,
            "operator-signing.nk": op_signing,
            "account.nk": acct,
            "account-signing.nk": acct_signing,
            "system-account.nk": sys_acct,
        }.items():
            write_secret_file(directory / name, key.seed + "\n")
        op_jwt = operator_jwt(
            op, name="meshssh", system_account=sys_acct.public, signing_keys=[op_signing.public]
        )
        acct_jwt = account_jwt(
            op_signing, acct.public, name=ACCOUNT_NAME, signing_keys=[acct_signing.public]
        )
        sys_jwt = account_jwt(op_signing, sys_acct.public, name="SYS", jetstream=False)
        for name, text in {
            "operator.jwt": op_jwt,
            "account.jwt": acct_jwt,
            "system-account.jwt": sys_jwt,
        }.items():
            write_secret_file(directory / name, text + "\n")
        sys_user_jwt = user_jwt(
            sys_acct,
            sys_user.public,
            name="system",
            account=sys_acct.public,
            permissions=admin_permissions().claims(),
        )
        write_creds(directory / "system.creds", sys_user_jwt, sys_user.seed)
        keys = cls(directory, op_signing, acct.public, acct_signing, sys_acct.public)
        for role in SERVICE_ROLES:
            keys.issue_service(role)
        write_secret_file(directory / "nats-auth.conf", keys.auth_config())
        hosts = tuple(tls_hosts)
        if hosts:
            write_tls_files(directory, hosts)
        return keys

    @classmethod
    def load(cls, directory: Path) -> BusKeys:
        """The keys policy needs at run time (no identity seeds are read).

        Raises:
            OSError: a file is missing or unreadable.
            ValueError: a seed is malformed.
        """
        acct_signing = _seed(directory / "account-signing.nk")
        claims = json.loads((directory / "meta.json").read_text())
        return cls(
            directory,
            _seed(directory / "operator-signing.nk"),
            str(claims["account"]),
            acct_signing,
            str(claims["system_account"]),
        )

    def issue_service(self, role: str) -> Path:
        """Write ``<role>.creds``: a new key and JWT (no expiry) for a service or admin.

        Returns:
            The creds file's path. The previous key of the role, if any, is not revoked here:
            policy revokes it (``POST /api/v1/bus/revocations``, ``meshctl bus revoke``).
        """
        user = new_key(Prefix.USER)
        jwt = self.mint(user.public, name=role, permissions=_permissions(role, user.public))
        path = self.dir / f"{role}.creds"
        write_creds(path, jwt, user.seed)
        write_secret_file(
            self.dir / "meta.json",
            json.dumps({"account": self.account, "system_account": self.system_account}) + "\n",
        )
        return path

    def mint(
        self, public: str, *, name: str, permissions: Permissions, ttl: float | None = None
    ) -> str:
        """A user JWT of the MESHSSH account for ``public``, signed by the account signing key."""
        return user_jwt(
            self.account_signing,
            public,
            name=name,
            account=self.account,
            permissions=permissions.claims(),
            ttl=ttl,
        )

    def account_jwt(self, revocations: dict[str, int] | None = None) -> str:
        """The MESHSSH account JWT, freshly signed (``iat`` now) with ``revocations``."""
        return account_jwt(
            self.operator_signing,
            self.account,
            name=ACCOUNT_NAME,
            signing_keys=[self.account_signing.public],
            revocations=revocations,
        )

    def creds(self, role: str) -> Path:
        """The creds file of a service role, or ``system``."""
        return self.dir / f"{role}.creds"

    def auth_config(self) -> str:
        """The ``operator``/``system_account``/``resolver_preload`` part of a server config."""
        op = (self.dir / "operator.jwt").read_text().strip()
        acct = (self.dir / "account.jwt").read_text().strip()
        sys_jwt = (self.dir / "system-account.jwt").read_text().strip()
        return (
            f'operator: "{op}"\n'
            f'system_account: "{self.system_account}"\n'
            "resolver_preload: {\n"
            f'  {self.account}: "{acct}"\n'
            f'  {self.system_account}: "{sys_jwt}"\n'
            "}\n"
        )

    def server_config(
        self,
        *,
        port: int,
        store: Path,
        resolver: Path,
        host: str = "127.0.0.1",
        tls: bool = False,
        extra: str = "",
    ) -> str:
        """A whole nats-server config: JetStream, the full resolver, and TLS when asked."""
        parts = [
            f'host: "{host}"',
            f"port: {port}",
            # service JWTs carry their permission lists in CONNECT: above the 4 KiB default
            "max_control_line: 16KB",
            f'jetstream {{ store_dir: "{store}" }}',
            self.auth_config(),
            f'resolver {{ type: full, dir: "{resolver}", allow_delete: false, interval: "2m" }}',
        ]
        if tls:
            d = self.dir
            parts.append(
                f'tls {{ cert_file: "{d / "server.crt"}", key_file: "{d / "server.key"}",'
                f' ca_file: "{d / "ca.crt"}", timeout: 2 }}'
            )
        if extra:
            parts.append(extra)
        return "\n".join(parts) + "\n"
