"""The session clock on a real event loop: idle and maximum-length limits fire once, on time."""

from __future__ import annotations

import asyncio
import time

from meshssh_common.wire import SessionRules
from meshssh_sshd.session_clock import SessionClock


async def _expiry(clock_rules: SessionRules, touches: list[float]) -> tuple[str, float]:
    fired: asyncio.Future[tuple[str, float]] = asyncio.get_running_loop().create_future()
    calls: list[str] = []

    def expired(reason: str, text: str) -> None:
        calls.append(reason)
        if not fired.done():
            fired.set_result((reason, time.monotonic()))

    clock = SessionClock(clock_rules, expired=expired)
    started = time.monotonic()
    clock.start()
    for at in touches:
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        clock.touch()
    async with asyncio.timeout(5):
        reason, when = await fired
    await asyncio.sleep(0.3)
    clock.stop()
    assert calls == [reason]  # once
    return reason, when - started


async def test_idle_fires_after_the_last_touch_and_max_fires_despite_touches() -> None:
    reason, after = await _expiry(SessionRules(idle_timeout=1), [0.5])
    assert reason == "idle_timeout"
    assert 1.5 <= after <= 1.6, after
    reason, after = await _expiry(SessionRules(idle_timeout=1, max_session=1), [0.3, 0.6, 0.9])
    assert reason == "max_session"
    assert 1.0 <= after <= 1.1, after


async def test_no_rules_arm_nothing_and_stop_disarms() -> None:
    fired: list[str] = []
    clock = SessionClock(SessionRules(), expired=lambda r, t: fired.append(r))
    assert not clock.active
    clock.start()
    stopped = SessionClock(SessionRules(idle_timeout=1), expired=lambda r, t: fired.append(r))
    stopped.start()
    stopped.stop()
    await asyncio.sleep(1.3)
    assert fired == []
