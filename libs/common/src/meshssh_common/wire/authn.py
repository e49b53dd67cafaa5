"""Identity messages: the JWKS snapshot in KV, JWKS refresh and the device-flow broker."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from meshssh_common.wire.base import Count, Part, PeerId, Wire
from meshssh_common.wire.netmap import JwtConfig

__all__ = [
    "EXCHANGE_AUDIENCE_PREFIX",
    "JWT_TOKEN_TYPE",
    "DevicePollReply",
    "DevicePollRequest",
    "DeviceStartReply",
    "DeviceStartRequest",
    "JwksMissed",
    "JwksRefreshReply",
    "JwksRefreshRequest",
    "JwksSnapshot",
    "OidcClientConfig",
    "TokenExchangeReply",
    "TokenExchangeRequest",
    "peer_audience",
]

EXCHANGE_AUDIENCE_PREFIX = "meshssh:peer:"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # RFC 8693 §3


def peer_audience(peer_id: str) -> str:
    """The ``aud`` of a per-peer token for ``peer_id`` (SPEC §6)."""
    return EXCHANGE_AUDIENCE_PREFIX + peer_id


class OidcClientConfig(Part, frozen=True, kw_only=True):
    """What a client needs to run the OIDC device flow (``meshssh login``)."""

    issuer: str
    client_id: str
    device_authorization_endpoint: str
    token_endpoint: str
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    audience: str = ""
    # Added by the identity issue (defaults keep older payloads valid):
    use_id_token: bool = False  # present the ID token over SSH instead of the access token
    max_token_age: Annotated[int, msgspec.Meta(ge=1)] = 600  # the servers' limit, for caches
    clock_skew: Annotated[int, msgspec.Meta(ge=0)] = 60


class JwksSnapshot(Wire, tag="authn.jwks.v1", frozen=True, kw_only=True):
    """The validation config and signing keys authn mirrors into KV ``meshssh-jwks``.

    ``keys`` are JWKs exactly as the provider publishes them (RFC 7517 objects).
    """

    jwt: JwtConfig
    keys: tuple[dict[str, Any], ...] = ()
    fetched_at: float = 0.0
    source: str = ""  # the JWKS URL the keys came from
    client: OidcClientConfig | None = None
    # Per-peer tokens (issue 15): authn's exchange keys (public JWKs, EdDSA) and the ``iss`` of
    # the tokens they sign. sshd validates a token by one of these keys only as a per-peer
    # token, and an IdP token never by them.
    exchange_issuer: str = ""
    exchange_keys: tuple[dict[str, Any], ...] = ()


class JwksRefreshRequest(Wire, tag="authn.jwks-refresh.v1", frozen=True, kw_only=True):
    """A server met an unknown ``kid``: ask authn to refetch (rate-limited).

    ``kids`` (added by issue 12) carries further unknown ids met at the same time: a server
    batches the ids it meets while a request is in flight into its next one.
    """

    kid: Annotated[str, msgspec.Meta(max_length=256)] = ""
    requester: str = ""
    kids: Annotated[
        tuple[Annotated[str, msgspec.Meta(max_length=256)], ...], msgspec.Meta(max_length=64)
    ] = ()


class JwksRefreshReply(Wire, tag="authn.jwks-refreshed.v1", frozen=True, kw_only=True):
    """Whether a fetch happened, and the key ids now published."""

    fetched: bool
    key_ids: tuple[str, ...] = ()
    retry_after: float = 0.0


class JwksMissed(Wire, tag="authn.jwks-missed.v1", frozen=True, kw_only=True):
    """Between authn replicas: a forced fetch did not find these kids; refuse them a while."""

    kids: Annotated[
        tuple[Annotated[str, msgspec.Meta(max_length=256)], ...], msgspec.Meta(max_length=256)
    ] = ()
    ttl: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 0.0
    sender: str = ""


class DeviceStartRequest(Wire, tag="authn.device-start.v1", frozen=True, kw_only=True):
    """An SSH server starts a browser check on behalf of a connecting user.

    The context (which server, which local user, which source) is shown on the embedded
    provider's confirm page (RFC 8628 §5.4), so a user cannot be phished into approving a login
    they did not start without seeing whose it is.
    """

    peer_id: str = ""
    login_hint: str = ""  # the local user the connection asks for
    peer_name: str = ""  # the server peer's name
    source_addr: str = ""  # the connecting client's mesh address and port
    source_peer: str = ""  # the source peer's id, when the map names one
    source_peer_name: str = ""


class DeviceStartReply(Wire, tag="authn.device-started.v1", frozen=True, kw_only=True):
    """RFC 8628 device authorization response, relayed."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str = ""
    expires_in: Count = 600
    interval: Count = 5


class DevicePollRequest(Wire, tag="authn.device-poll.v1", frozen=True, kw_only=True):
    """Poll a device flow started with :class:`DeviceStartRequest`."""

    device_code: str


class DevicePollReply(Wire, tag="authn.device-polled.v1", frozen=True, kw_only=True):
    """``ok`` carries the token; the others mirror RFC 8628 error codes."""

    status: Literal["ok", "pending", "slow_down", "denied", "expired"]
    token: str = ""


class TokenExchangeRequest(Wire, tag="authn.token-exchange.v1", frozen=True, kw_only=True):
    """An agent trades its user's IdP token for a per-peer token (RFC 8693 shape, SPEC §6).

    Sent on ``meshssh.authn.v1.req.token-exchange.<requesting peer>``; the reply goes to the
    requester's inbox only.
    """

    subject_token: Annotated[str, msgspec.Meta(max_length=16384)]
    target_peer: PeerId
    subject_token_type: str = JWT_TOKEN_TYPE


class TokenExchangeReply(Wire, tag="authn.token-exchanged.v1", frozen=True, kw_only=True):
    """RFC 8693 §2.2.1: the per-peer token and how long it lives."""

    access_token: str
    issued_token_type: str = JWT_TOKEN_TYPE
    token_type: str = "N_A"
    expires_in: Count = 0
