"""Key rotation at a third-party issuer is not held up by made-up key ids (issue 12).

Everything is real: a third-party-style OIDC issuer on a real HTTP server (the test holds
its keys and counts its JWKS fetches; a hosted IdP cannot run here), meshssh-authn as a
process mirroring it into ``meshssh-jwks``, nats-server, and the in-process sshd whose
:class:`Authenticator` (the validator plus the ``jwks-refresh`` request over NATS) checks each
token exactly as it does for an SSH login; one OpenSSH login closes the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats.js.errors
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.jwt_validation import RejectReason, TokenRejected
from meshssh_common.kv import open_bucket
from meshssh_common.wire import JwtConfig
from meshssh_sshd.auth import Authenticator
from meshssh_testkit import NatsServer, OidcIssuer
from meshssh_testkit.plugin import ServiceFactory
from meshssh_testkit.signing import authn_test_key, read_jwks

if TYPE_CHECKING:
    from conftest import Mesh, Sshd, SshdFactory

STRANGER = ec.generate_private_key(ec.SECP256R1())  # signs the tokens with made-up kids


@dataclass
class Stack:
    idp: OidcIssuer
    sshd: Sshd
    auth: Authenticator

    def refreshes(self, result: str) -> float:
        return self.sshd.metric("meshssh_sshd_jwks_refreshes_total", result=result)

    def made_up(self, kid: str = "") -> str:
        """A token whose kid the issuer never published (signed by a stranger's key)."""
        return self.idp.token(kid or f"made-up-{uuid.uuid4().hex}", key=STRANGER)


async def _wait_for(predicate: Any, what: str, timeout: float = 15.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@pytest.fixture
async def stack(
    bare_mesh: Mesh,
    nc: NATS,
    nats_server: NatsServer,
    services: ServiceFactory,
    sshd_factory: SshdFactory,
    local_user: str,
    tmp_path: Path,
) -> AsyncIterator[Stack]:
    async with OidcIssuer() as idp:
        key, _ = authn_test_key(tmp_path)  # sshd's pins trust it (SshdFactory reads them)
        await services.start(
            "meshssh-authn",
            *nats_server.flags("authn"),
            "--jwks-signing-key",
            str(key),
            "--issuer",
            idp.issuer,
            "--audience",
            "meshssh",
            "--instance",
            "authn-rotation",
        )
        kv = await open_bucket(nc.jetstream(), subjects.BUCKET_JWKS)
        async with asyncio.timeout(15):
            while True:
                with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                    entry = await kv.get(subjects.JWKS_KEY)
                    if entry.value:
                        break
                await asyncio.sleep(0.05)
        assert read_jwks(entry.value).jwt.issuer == idp.issuer
        config = JwtConfig(issuer=idp.issuer, audiences=("meshssh",))
        await bare_mesh.publish_map(jwt=config, grants=(("alice", "*"),))
        sshd = await sshd_factory.start()
        core = sshd.server.core
        assert core is not None
        await _wait_for(
            lambda: core.maps.current is not None and core.keys.validator_for(config) is not None,
            "sshd to have the map and the keys",
        )
        yield Stack(idp, sshd, core.auth)


async def test_after_a_made_up_kid_a_real_rotation_is_accepted_within_2_s(
    stack: Stack, client_for: Any, local_user: str
) -> None:
    idp, auth = stack.idp, stack.auth
    start = idp.jwks_fetches
    bogus = stack.made_up("made-up-1")
    with pytest.raises(TokenRejected) as refused:
        await auth.validate(bogus)
    assert refused.value.reason is RejectReason.UNKNOWN_KID
    assert idp.jwks_fetches == start + 1  # the made-up kid got its one fetch
    assert stack.refreshes("missed") == 1

    idp.rotate("k2")  # at once: the provider rotates to a new real key
    rotated = idp.token("k2")
    began = time.monotonic()
    _, accepted = await auth.validate(rotated)
    elapsed = time.monotonic() - began
    assert accepted.kid == "k2"
    assert accepted.user_id == "alice"
    # Not held up by the made-up kid's 30 s pause (the bug); a loaded machine stays well under.
    assert elapsed < 10.0, f"the rotated key took {elapsed:.2f}s"
    assert idp.jwks_fetches == start + 2
    assert stack.refreshes("fetched") == 1

    # The kid that just missed is refused again at once, without a request or a fetch.
    with pytest.raises(TokenRejected) as again:
        await auth.validate(bogus)
    assert again.value.reason is RejectReason.UNKNOWN_KID
    assert stack.refreshes("throttled_kid") == 1
    assert idp.jwks_fetches == start + 2

    # And a real OpenSSH login with the rotated key works end to end.
    result = await client_for(stack.sshd).ssh("echo rotated", token=rotated, user=local_user)
    assert result.returncode == 0, result.err
    assert "rotated" in result.out
    assert idp.jwks_fetches == start + 2


async def test_a_flood_of_made_up_kids_keeps_the_global_cap_and_lets_a_rotation_through(
    stack: Stack,
) -> None:
    idp, auth = stack.idp, stack.auth
    flood_began = time.monotonic()
    start = idp.jwks_fetches

    async def made_up_login() -> RejectReason:
        try:
            await auth.validate(stack.made_up())
        except TokenRejected as e:
            return e.reason
        raise AssertionError("a made-up kid was accepted")

    attempts: list[asyncio.Task[RejectReason]] = []

    async def flood(seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            attempts.append(asyncio.create_task(made_up_login()))
            await asyncio.sleep(0.01)

    flooding = asyncio.create_task(flood(4.0))
    await asyncio.sleep(1.0)
    idp.rotate("k3")  # the provider rotates in the middle of the flood
    rotated = idp.token("k3")
    began = time.monotonic()
    _, accepted = await auth.validate(rotated)
    elapsed = time.monotonic() - began
    assert accepted.kid == "k3"
    assert elapsed < 10.0, f"the rotated key took {elapsed:.2f}s under the flood"
    await flooding
    async with asyncio.timeout(15):
        reasons = await asyncio.gather(*attempts)
    window = time.monotonic() - flood_began
    assert len(attempts) >= 100
    assert set(reasons) == {RejectReason.UNKNOWN_KID}
    fetches = idp.fetch_times[start:]
    # One forced fetch a second at most (authn's cap), whatever the number of made-up kids.
    assert 1 <= len(fetches) <= int(window / 1.0) + 1, (len(fetches), window, len(attempts))
    gaps = [b - a for a, b in itertools.pairwise(fetches)]
    assert all(gap > 0.9 for gap in gaps), gaps
    # Every made-up kid was settled by a fetch or refused by the pacing, none by an error.
    settled = ("missed", "throttled_kid", "throttled_global", "throttled_authn")
    assert sum(map(stack.refreshes, settled)) == len(attempts)
    assert stack.refreshes("error") == 0
