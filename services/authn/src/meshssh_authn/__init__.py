"""meshssh-authn: identity: OIDC provider, JWKS mirror, device-flow broker."""

from meshssh_authn.settings import AuthnSettings

__all__ = ["AuthnSettings"]
