"""The bounded memory of key ids that were just not found."""

from __future__ import annotations

import pytest

from meshssh_common.kid_misses import KidMisses


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_miss_is_refused_for_its_ttl_and_then_forgotten() -> None:
    clock = Clock()
    misses = KidMisses(clock=clock)
    misses.record("made-up", 30.0)
    assert misses.remaining("made-up") == pytest.approx(30.0)
    assert misses.remaining("other") == 0.0
    clock.now += 29.9
    assert misses.remaining("made-up") > 0
    clock.now += 0.2
    assert misses.remaining("made-up") == 0.0
    assert len(misses) == 0


def test_a_shorter_ttl_never_cuts_a_longer_one_and_forget_clears() -> None:
    clock = Clock()
    misses = KidMisses(clock=clock)
    misses.record("k", 30.0)
    misses.record("k", 1.0)
    assert misses.remaining("k") == pytest.approx(30.0)
    misses.forget("k")
    assert misses.remaining("k") == 0.0
    misses.record("k", 0.0)  # no time at all: not remembered
    assert len(misses) == 0


def test_a_flood_of_random_kids_stays_within_capacity_and_keeps_the_newest() -> None:
    clock = Clock()
    misses = KidMisses(capacity=100, clock=clock)
    for i in range(10_000):
        clock.now += 0.001
        misses.record(f"random-{i}", 30.0)
        misses.record(f"random-{i}", 31.0)  # re-records leave stale heap pairs behind
    assert len(misses) == 100
    assert len(misses._heap) <= 4 * 100 + 1
    assert misses.remaining("random-9999") > 0
    assert misses.remaining("random-0") == 0.0


def test_expired_entries_are_pruned_before_live_ones_are_dropped() -> None:
    clock = Clock()
    misses = KidMisses(capacity=2, clock=clock)
    misses.record("short", 1.0)
    misses.record("long", 60.0)
    clock.now += 2
    misses.record("new", 60.0)
    assert misses.remaining("long") > 0
    assert misses.remaining("new") > 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        KidMisses(capacity=0)
