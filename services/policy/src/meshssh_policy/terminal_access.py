"""Who may open a browser terminal to which peer, as which local user (issue 20).

The decision is the one the peer's sshd makes, taken from the same places: the peer's map as
policy compiles it now (what it publishes; a rule removed a moment ago already counts), the
map's SSH switch, root login only on a peer started with ``--enable-ssh-root``, and
:func:`meshssh_common.ssh_auth.authorize` on the map's table. The choices a form offers come
from :func:`meshssh_common.ssh_auth.local_users_of` on that table, each one still decided by
``authorize``. sshd checks the login again when the gateway connects (and live, as maps change).

Example::

    access = terminal_access(mgmt, peer_id, session.user)
    if not access.refusal:
        refusal = access.login_refusal("deploy")   # "" when sshd would let the user in
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshssh_common.ssh_auth import WILDCARD, authorize, local_users_of
from meshssh_common.wire import SshAuth
from meshssh_policy.compiler import Compiler
from meshssh_policy.management import Management

__all__ = ["Access", "terminal_access"]

_LOCAL_USER = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,31}")  # api_models.LocalUser, no "*"


@dataclass(frozen=True, slots=True)
class Access:
    """What one user may do on one peer through a browser terminal.

    ``refusal`` is "" when some login may be allowed; ``local_users`` are the named choices,
    ``any_user`` says the rules open every local user (the form takes a typed name).
    """

    peer_id: str
    peer_name: str
    user: str
    refusal: str = ""
    local_users: tuple[str, ...] = ()
    any_user: bool = False
    root_login: bool = False
    table: SshAuth | None = None

    @property
    def allowed(self) -> bool:
        """True when the Connect button is shown."""
        return not self.refusal

    def login_refusal(self, local_user: str) -> str:
        """Why sshd would refuse ``user`` as ``local_user`` here ("" when it would not)."""
        if self.refusal:
            return self.refusal
        if not _LOCAL_USER.fullmatch(local_user):
            return f"{local_user[:40]!r} is not a local user name"
        if local_user == "root" and not self.root_login:
            return (
                f"root login is off on {self.peer_name} (its agent was not started with "
                "--enable-ssh-root)"
            )
        if not authorize(self.table, self.user, local_user):
            return (
                f"your rules do not let you log in to {self.peer_name} as {local_user}: "
                "no enabled policy grants it (ask an administrator)"
            )
        return ""


def terminal_access(
    mgmt: Management, peer_id: str, user: str, compiler: Compiler | None = None
) -> Access:
    """What ``user`` may do on ``peer_id`` under the current policies.

    ``compiler``: one for many peers (the Peers page); by default a new one.
    """
    peer = mgmt.state.peers.get(peer_id)
    if peer is None:
        return Access(peer_id, peer_id, user, refusal=f"peer {peer_id[:80]!r} does not exist")
    name = peer.name
    if not mgmt.settings.gateway_url:
        return Access(
            peer_id, name, user, refusal="browser terminals are off (policy has no --gateway-url)"
        )
    netmap = (compiler or mgmt.compiler()).compile(peer_id)
    flags = peer.meta.flags
    if not flags.server_ssh_allowed:
        why = f"{name} runs no SSH server (its agent was not started with --allow-server-ssh)"
        return Access(peer_id, name, user, refusal=why)
    if not netmap.peer.ssh_enabled:
        why = f"SSH is off on {name}: its switch is off and no enabled ssh policy targets it"
        return Access(peer_id, name, user, refusal=why)
    if not mgmt.presence.online(peer_id):
        return Access(peer_id, name, user, refusal=f"{name} is offline")
    table = netmap.ssh_auth
    named = local_users_of(table, user)
    any_user = WILDCARD in named
    choices = tuple(u for u in named if u != WILDCARD and (u != "root" or flags.root_login))
    if not any_user and not choices:
        why = f"your rules do not let you log in to {name}: no enabled policy grants it"
        return Access(peer_id, name, user, refusal=why)
    return Access(
        peer_id,
        name,
        user,
        local_users=choices,
        any_user=any_user,
        root_login=flags.root_login,
        table=table,
    )
