"""The keyboard-interactive browser check: a device flow brokered by authn (SPEC §6).

For clients that cannot send a token (plain OpenSSH, PuTTY, paramiko, IDEs), the server
starts an OIDC device flow through authn (``device-start.<its peer id>``) and shows the
verification URL and the user code in the challenge; the user logs in in a browser and presses
Enter; the server then polls (``device-poll.<its peer id>``, honouring ``interval`` and
``slow_down``) for at most ``wait`` seconds, and the token it gets is validated exactly like a
password token. A token pasted as the answer is accepted too. When authn cannot start a flow,
the challenge still offers pasting a token.

Example::

    check = BrowserCheck(ctx.nc, "p1", wait=45, log=log)
    flow = await check.start("alice", origin)         # None when authn is unavailable
    name, instructions, lang, prompts = check.challenge(flow)
    token = await check.wait_for_token(flow)          # None: still pending
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.errors import MeshError
from meshssh_common.logs import BoundLogger
from meshssh_common.rpc import request
from meshssh_common.wire import (
    DevicePollReply,
    DevicePollRequest,
    DeviceStartReply,
    DeviceStartRequest,
)
from meshssh_sshd.origin import Origin
from meshssh_sshd.refusal import Refused

__all__ = ["BrowserCheck", "Challenge", "DeviceFlow"]

Challenge = tuple[str, str, str, list[tuple[str, bool]]]
_PROMPT = "Press Enter once you have logged in (or paste a token): "
_NAME = "MeshSSH browser check"


@dataclass(slots=True)
class DeviceFlow:
    """A started device flow (the fields of the RFC 8628 response we use)."""

    device_code: str
    user_code: str
    url: str
    expires_at: float
    interval: float


class BrowserCheck:
    """Starts and polls device flows through authn on behalf of connecting users."""

    def __init__(self, nc: NATS, peer_id: str, *, wait: float, log: BoundLogger) -> None:
        self._nc = nc
        self._peer_id = peer_id
        self._wait = wait
        self._log = log

    async def start(
        self, local_user: str, origin: Origin, *, peer_name: str = ""
    ) -> DeviceFlow | None:
        """Start a device flow; None when authn cannot (the user may still paste a token).

        The request carries what the login is for (this peer, ``local_user``, the source peer
        and address) so the provider's page can show it before the user approves.
        """
        started = DeviceStartRequest(
            peer_id=self._peer_id,
            peer_name=peer_name,
            login_hint=local_user[:64],
            source_addr=origin.label,
            source_peer=origin.peer_id,
            source_peer_name=origin.peer_name,
        )
        try:
            reply = await request(
                self._nc,
                subjects.device_start(self._peer_id),
                started,
                DeviceStartReply,
                timeout=5.0,
            )
        except MeshError as e:
            self._log.warning(
                "browser check unavailable: authn did not start a device flow",
                extra={"error": str(e)},
            )
            return None
        return DeviceFlow(
            device_code=reply.device_code,
            user_code=reply.user_code,
            url=reply.verification_uri,
            expires_at=time.monotonic() + reply.expires_in,
            interval=float(max(1, reply.interval)),
        )

    def challenge(self, flow: DeviceFlow | None, *, again: bool = False) -> Challenge:
        """The keyboard-interactive challenge that shows the URL and the code."""
        if flow is None:
            text = (
                "The browser check is not available right now. Run `meshssh login` on your "
                "machine and paste the token here, or connect with `meshssh ssh`."
            )
        else:
            first = "Not confirmed yet. " if again else ""
            text = (
                f"{first}To log in, open {flow.url} in a browser and enter the code "
                f"{flow.user_code}\nURL: {flow.url}\nCode: {flow.user_code}"
            )
        return _NAME, text, "", [(_PROMPT, False)]

    async def wait_for_token(self, flow: DeviceFlow) -> str | None:
        """Poll until the user finished in the browser; None if still pending after ``wait``.

        Raises:
            Refused: the user denied the request (``browser_denied``), the flow expired
                (``browser_expired``), or authn stopped answering (``browser_unavailable``).
        """
        deadline = min(time.monotonic() + self._wait, flow.expires_at)
        while True:
            reply = await self._poll(flow)
            if reply.status == "ok" and reply.token:
                return reply.token
            if reply.status == "denied":
                raise Refused(
                    "browser_denied",
                    "the user denied the device request",
                    public="Permission denied: the login was cancelled in the browser",
                )
            if reply.status == "expired" or time.monotonic() >= flow.expires_at:
                raise Refused(
                    "browser_expired",
                    "the device code expired",
                    public="Authentication failed: the login code expired; "
                    "connect again to get a new one",
                )
            if reply.status == "slow_down":
                flow.interval += 5
            if time.monotonic() + flow.interval > deadline:
                return None
            await asyncio.sleep(flow.interval)

    async def _poll(self, flow: DeviceFlow) -> DevicePollReply:
        try:
            return await request(
                self._nc,
                subjects.device_poll(self._peer_id),
                DevicePollRequest(device_code=flow.device_code),
                DevicePollReply,
                timeout=5.0,
            )
        except MeshError as e:
            raise Refused(
                "browser_unavailable",
                f"device poll failed: {e}",
                public="Authentication failed: the identity service did not answer; "
                "try again in a minute",
            ) from e
