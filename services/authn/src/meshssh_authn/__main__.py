"""Entry point of meshssh-authn: identity: OIDC provider, JWKS mirror, device-flow broker."""

from __future__ import annotations

import sys

from meshssh_authn.server import serve
from meshssh_authn.settings import AuthnSettings
from meshssh_common.service import service_main

__all__ = ["main"]


def main() -> int:
    """Run meshssh-authn; exit 0 on a clean stop, 1 on a crash, 2 on a bad setting."""
    return service_main(
        "authn",
        AuthnSettings,
        serve,
        description="meshssh identity: OIDC provider, JWKS mirror, device-flow broker",
    )


if __name__ == "__main__":
    sys.exit(main())
