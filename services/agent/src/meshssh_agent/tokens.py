"""The agent's JWT cache: authn's per-uid :class:`TokenCache`, hosted behind the agent socket.

The cache itself (``token_cache``) keeps one slot per local uid for ``--ssh-jwt-cache-ttl``
seconds, never past the token's ``exp`` nor ``iat`` + the servers' max token age, in memory
only, and runs one device flow per uid however many callers wait (SPEC §9). The agent adds:

- the fetch: a device flow against the provider the management plane names
  (``GET <management-url>/api/v1/auth/config``); the agent is a daemon and opens no browser,
  so the URL and code go to every waiting caller, who shows them;
- :meth:`AgentTokenCache.put`: keep a token the caller obtained elsewhere (same bounds);
- the servers' limits (max token age, clock skew) follow the peer's map.

Example::

    cache = AgentTokenCache(device_flow_fetch("http://127.0.0.1:8080"), ttl=300)
    token = await cache.get(uid, on_prompt=show)      # cached, or one shared device flow
"""

from __future__ import annotations

import httpx

from meshssh_agent.token_cache import CachedToken, Fetch, Notify, TokenCache
from meshssh_common.errors import ConfigError
from meshssh_common.oidc_device import DeviceFlowClient, fetch_client_config
from meshssh_common.wire import JwtConfig

__all__ = ["AgentTokenCache", "device_flow_fetch"]


class AgentTokenCache(TokenCache):
    """:class:`TokenCache` plus :meth:`put` and limits taken from the map."""

    def put(self, uid: int, token: str) -> CachedToken | None:
        """Cache ``token`` for ``uid``; None when it is not kept (TTL 0, or already too old)."""
        now = self._clock()
        until = self.valid_until(token, now)
        if self.ttl <= 0 or until <= now:
            self.invalidate(uid)
            return None
        entry = CachedToken(token, until)
        self._entries[uid] = entry
        return entry

    def follow(self, jwt: JwtConfig | None) -> None:
        """Use the servers' current limits (from the map's JWT config)."""
        if jwt is not None:
            self.max_token_age = float(jwt.max_token_age)
            self.clock_skew = float(jwt.clock_skew)


def device_flow_fetch(management_url: str, *, timeout: float = 15.0) -> Fetch:
    """The cache's fetch: one device flow with the provider management names.

    Raises (from the fetch):
        ConfigError: the agent was started without ``--management-url``.
        MeshError: the management plane or the provider refused or did not answer.
    """

    async def fetch(uid: int, notify: Notify) -> str:
        if not management_url:
            raise ConfigError(
                "--management-url", "the agent needs it to run logins (meshssh up --management-url)"
            )
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout)) as http:
            config = await fetch_client_config(http, management_url)
            flow = DeviceFlowClient(config, http)
            auth = await flow.start()
            notify(auth)
            return (await flow.wait(auth)).token

    return fetch
