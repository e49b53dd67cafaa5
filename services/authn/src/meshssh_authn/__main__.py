"""Entry point of meshssh-authn: the service, or ``meshssh-authn users ...`` to manage users."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from meshssh_authn.users_cli import users_main

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run meshssh-authn; exit 0 on a clean stop, 1 on a crash, 2 on a bad setting."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["users"]:
        return users_main(args[1:])
    # Imported here so that `users` commands start fast (no web or NATS stack).
    from meshssh_authn.server import serve
    from meshssh_authn.settings import AuthnSettings
    from meshssh_common.service import service_main

    return service_main(
        "authn",
        AuthnSettings,
        serve,
        args,
        description="meshssh identity: OIDC provider, JWKS mirror, device-flow broker "
        "(`meshssh-authn users --help` manages the embedded provider's users)",
    )


if __name__ == "__main__":
    sys.exit(main())
