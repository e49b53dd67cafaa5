"""Per-peer tokens (SPEC §6): only tokens naming this peer, each jti once, IdP tokens only with
--accept-idp-tokens, and the two key sets never standing in for each other.

The per-peer tokens are minted here with an Ed25519 key published as the snapshot's
``exchange_keys`` (conftest's ``Exchange``), as authn's token exchange signs them; authn
itself is not needed for what sshd checks. Logins use the real OpenSSH client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from meshssh_sshd.replay_cache import ReplayCache, Use

if TYPE_CHECKING:
    from conftest import Issuer, Mesh, SshdFactory


def rejects(sshd: Any, reason: str) -> float:
    return float(sshd.metric("meshssh_sshd_auth_rejects_total", reason=reason))


async def test_a_per_peer_token_logs_in_once_and_its_second_use_is_refused_as_replayed(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, local_user: str
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start(accept_idp_tokens=False)  # sshd's default
    client = client_for(sshd)
    token = mesh.exchange.mint("alice-id")
    first = await client.ssh("echo per-peer", token=token, user=local_user)
    assert first.returncode == 0, first.err
    assert first.out == "per-peer\n"
    again = await client.ssh("true", token=token, user=local_user)
    assert again.returncode == 255
    assert "MeshSSH-Refusal: replayed" in again.err
    assert "already used" in again.err
    assert rejects(sshd, "replayed") == 1
    event = await mesh.wait_audit(lambda e: e.kind == "auth-rejected")
    assert (event.reason, event.local_user) == ("replayed", local_user)
    accepted = await mesh.wait_audit(lambda e: e.kind == "auth-accepted")
    assert accepted.jwt_user == "alice-id"
    # A fresh token (a new jti) for the same user works again.
    fresh = await client.ssh("true", token=mesh.exchange.mint("alice-id"), user=local_user)
    assert fresh.returncode == 0, fresh.err


async def test_a_token_for_another_peer_is_refused_as_wrong_audience(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, local_user: str
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start(accept_idp_tokens=False)
    client = client_for(sshd)
    other = await client.ssh(
        "true", token=mesh.exchange.mint("alice-id", peer="server-2"), user=local_user
    )
    assert other.returncode == 255
    assert "MeshSSH-Refusal: wrong_audience" in other.err
    assert "another peer" in other.err
    # aud naming this peer among others is not a per-peer token either.
    both = mesh.exchange.mint("alice-id", aud=["meshssh:peer:server-1", "meshssh:peer:server-2"])
    shared = await client.ssh("true", token=both, user=local_user)
    assert shared.returncode == 255
    assert rejects(sshd, "wrong_audience") == 2
    event = await mesh.wait_audit(lambda e: e.kind == "auth-rejected")
    assert event.reason == "wrong_audience"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"ttl": -120}, "expired"),  # exp passed by more than the 60 s skew
        ({"age": 900}, "too_old"),  # the original iat is older than the map's max age
        ({"ttl": 3600}, "too_long_lived"),
        ({"jti": ""}, "missing_claim"),
        ({"iss": "https://idp.test"}, "bad_issuer"),  # exchange key, the IdP's issuer
    ],
)
async def test_a_per_peer_token_failing_a_check_is_refused_with_its_reason(
    claims: dict[str, Any],
    reason: str,
    mesh: Mesh,
    sshd_factory: SshdFactory,
    client_for: Any,
    local_user: str,
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start(accept_idp_tokens=False)
    result = await client_for(sshd).ssh(
        "true", token=mesh.exchange.mint("alice-id", **claims), user=local_user
    )
    assert result.returncode == 255
    assert f"MeshSSH-Refusal: {reason}" in result.err
    assert rejects(sshd, reason) == 1


async def test_an_idp_token_is_refused_by_default_and_accepted_with_accept_idp_tokens(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map()
    strict = await sshd_factory.start(accept_idp_tokens=False)
    refused = await client_for(strict).ssh("true", token=issuer.mint("alice-id"), user=local_user)
    assert refused.returncode == 255
    assert "MeshSSH-Refusal: idp_token_refused" in refused.err
    assert "--accept-idp-tokens" in refused.err  # what the user (or the admin) can do
    assert rejects(strict, "idp_token_refused") == 1
    event = await mesh.wait_audit(lambda e: e.kind == "auth-rejected")
    assert event.reason == "idp_token_refused"
    lenient = await sshd_factory.start(accept_idp_tokens=True)
    client = client_for(lenient)
    token = issuer.mint("alice-id")
    for _ in range(2):  # IdP tokens carry no jti: the NetBird behaviour, reusable until exp
        accepted = await client.ssh("echo idp", token=token, user=local_user)
        assert accepted.returncode == 0, accepted.err
        assert accepted.out == "idp\n"
    per_peer = await client.ssh("true", token=mesh.exchange.mint("alice-id"), user=local_user)
    assert per_peer.returncode == 0, per_peer.err  # per-peer tokens still work alongside


async def test_exchange_keys_never_validate_idp_tokens_and_idp_keys_never_per_peer_tokens(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, issuer: Issuer, local_user: str
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start(accept_idp_tokens=True)
    client = client_for(sshd)
    # Signed by the exchange key but shaped as an IdP token (its issuer and audience): the
    # kid makes it a per-peer token, and as one it fails.
    idp_shaped = mesh.exchange.mint("alice-id", iss="https://idp.test", aud="meshssh")
    result = await client.ssh("true", token=idp_shaped, user=local_user)
    assert result.returncode == 255
    assert rejects(sshd, "bad_issuer") == 1
    # Signed by the IdP's key but claiming the exchange kid: the exchange key does not verify it.
    forged = _resign(mesh.exchange.mint("alice-id"), issuer)
    result = await client.ssh("true", token=forged, user=local_user)
    assert result.returncode == 255
    assert "MeshSSH-Refusal: bad_signature" in result.err
    # Signed by the IdP's key under its own kid with per-peer claims: an IdP token, checked
    # against the IdP's issuer.
    peer_shaped = issuer.mint(
        "alice-id", iss="urn:meshssh:authn", aud="meshssh:peer:server-1", jti="j1"
    )
    result = await client.ssh("true", token=peer_shaped, user=local_user)
    assert result.returncode == 255
    assert rejects(sshd, "bad_issuer") == 2
    # An exchange key published among the IdP keys too still validates no IdP token.
    await mesh.publish_jwks(idp_keys=issuer.jwks() + mesh.exchange.jwks())
    await _wait_jwks(sshd, 2)
    result = await client.ssh("true", token=idp_shaped, user=local_user)
    assert result.returncode == 255
    assert rejects(sshd, "bad_issuer") == 3


async def test_the_replay_cache_is_bounded_and_a_full_cache_refuses_new_tokens(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, local_user: str
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start(accept_idp_tokens=False, replay_cache_size=2)
    client = client_for(sshd)
    for _ in range(2):
        ok = await client.ssh("true", token=mesh.exchange.mint("alice-id"), user=local_user)
        assert ok.returncode == 0, ok.err
    full = await client.ssh("true", token=mesh.exchange.mint("alice-id"), user=local_user)
    assert full.returncode == 255
    assert "MeshSSH-Refusal: replay_cache_full" in full.err
    assert rejects(sshd, "replay_cache_full") == 1
    assert sshd.metric("meshssh_sshd_replay_cache_entries") == 2


def test_replay_cache_entries_live_until_exp_plus_skew_and_the_cap_never_evicts_live_ones() -> None:
    now = [1000.0]
    cache = ReplayCache(capacity=3, skew=60, clock=lambda: now[0])
    assert cache.use("a", exp=1100) is Use.FRESH
    assert cache.use("a", exp=1100) is Use.REPLAYED
    assert cache.use("b", exp=1010) is Use.FRESH
    assert cache.use("c", exp=1200) is Use.FRESH
    assert cache.use("d", exp=1200) is Use.FULL  # full: refused, nothing forgotten
    assert len(cache) == 3
    now[0] = 1069  # b's token (exp 1010) still within the skew
    assert cache.use("b", exp=1010) is Use.REPLAYED
    now[0] = 1070.5  # b is dead (exp + skew passed): its slot is free
    assert len(cache) == 2
    assert cache.use("d", exp=1200) is Use.FRESH
    assert cache.use("a", exp=1100) is Use.REPLAYED
    now[0] = 1300
    assert len(cache) == 0
    with pytest.raises(ValueError, match="capacity"):
        ReplayCache(capacity=0)


async def test_a_pasted_per_peer_token_works_in_the_browser_check_and_only_once(
    mesh: Mesh, sshd_factory: SshdFactory, client_for: Any, local_user: str
) -> None:
    await mesh.publish_map()
    sshd = await sshd_factory.start(accept_idp_tokens=False)
    client = client_for(sshd)
    token = mesh.exchange.mint("alice-id")

    async def paste() -> Any:
        return await client.openssh.run(
            "ssh",
            "-p",
            str(sshd.port),
            f"{local_user}@{sshd.host}",
            "echo kbd",
            options=client.options(method="keyboard-interactive"),
            env=client.env(token),
        )

    first = await paste()
    assert first.returncode == 0, first.err
    assert first.out == "kbd\n"
    second = await paste()
    assert second.returncode != 0
    assert "MeshSSH-Refusal: replayed" in second.err
    assert (
        sshd.metric(
            "meshssh_sshd_auth_attempts_total", method="keyboard-interactive", result="reject"
        )
        >= 1
    )


def _resign(token: str, issuer: Issuer) -> str:
    """``token``'s header and claims, signed again by ``issuer``'s key."""
    import jwt

    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode(claims, issuer.key, algorithm="EdDSA", headers={"kid": header["kid"]})


async def _wait_jwks(sshd: Any, revision: int) -> None:
    import asyncio

    core = sshd.server.core
    assert core is not None
    async with asyncio.timeout(10):
        while core.keys._revision < revision:
            await asyncio.sleep(0.02)
