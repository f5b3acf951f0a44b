"""Restart decisions: backoff sequence, jitter, healthy reset, intensity window."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.policy import Backoff, Decision, Intensity, RestartPolicy, decide

NO_JITTER = RestartPolicy(
    backoff_initial=0.5, backoff_max=30.0, backoff_factor=2.0, jitter=0.0, healthy_after=10.0
)


def delays(policy: RestartPolicy, count: int, *, uptime: float = 0.0, seed: int = 0) -> list[float]:
    backoff = Backoff(policy)
    rng = random.Random(seed)
    return [backoff.next_delay(uptime, rng) for _ in range(count)]


def test_first_restart_is_immediate_then_exponential_up_to_the_cap():
    assert delays(NO_JITTER, 10) == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_backoff_counts_consecutive_failures():
    backoff = Backoff(NO_JITTER)
    rng = random.Random(0)
    for expected in (1, 2, 3):
        backoff.next_delay(0.0, rng)
        assert backoff.failures == expected


def test_other_factor_and_initial():
    policy = RestartPolicy(backoff_initial=1.0, backoff_max=100.0, backoff_factor=3.0, jitter=0.0)
    assert delays(policy, 7) == [0.0, 1.0, 3.0, 9.0, 27.0, 81.0, 100.0]


def test_factor_one_keeps_a_constant_delay():
    policy = RestartPolicy(backoff_initial=2.0, backoff_factor=1.0, jitter=0.0)
    assert delays(policy, 5) == [0.0, 2.0, 2.0, 2.0, 2.0]


def test_cap_below_initial_caps_the_first_delay():
    policy = RestartPolicy(backoff_initial=5.0, backoff_max=1.0, jitter=0.0)
    assert delays(policy, 3) == [0.0, 1.0, 1.0]


def test_healthy_uptime_resets_the_backoff():
    backoff = Backoff(NO_JITTER)
    rng = random.Random(0)
    assert [backoff.next_delay(1.0, rng) for _ in range(4)] == [0.0, 0.5, 1.0, 2.0]
    # Up for exactly healthy_after seconds: the slot counts as healthy again.
    assert backoff.next_delay(10.0, rng) == 0.0
    assert backoff.failures == 1
    assert backoff.next_delay(9.99, rng) == 0.5


def test_short_uptime_does_not_reset():
    backoff = Backoff(NO_JITTER)
    rng = random.Random(0)
    backoff.next_delay(0.0, rng)
    backoff.next_delay(0.0, rng)
    assert backoff.next_delay(9.999, rng) == 1.0


def test_many_slow_failures_stay_at_the_cap():
    # Thousands of failures inside the intensity limit must not overflow the power.
    assert delays(NO_JITTER, 3000)[-1] == 30.0
    integer_policy = RestartPolicy(backoff_initial=1, backoff_max=7, backoff_factor=2, jitter=0.0)
    assert delays(integer_policy, 3000)[-1] == 7


def test_zero_initial_delay_stays_zero_forever():
    policy = RestartPolicy(backoff_initial=0.0, jitter=0.0)
    assert set(delays(policy, 2000)) == {0.0}


def test_jitter_is_deterministic_for_a_seed():
    policy = RestartPolicy(jitter=0.5)
    assert delays(policy, 8, seed=42) == delays(policy, 8, seed=42)
    assert delays(policy, 8, seed=42) != delays(policy, 8, seed=43)


def test_jitter_matches_the_rng_draw():
    policy = RestartPolicy(backoff_initial=1.0, backoff_max=100.0, jitter=0.25)
    got = delays(policy, 4, seed=7)
    # The first restart draws nothing, so the draws start at the second.
    twin = random.Random(7)
    expected = [0.0] + [base * twin.uniform(0.75, 1.25) for base in (1.0, 2.0, 4.0)]
    assert got == expected


@settings(max_examples=150, deadline=None)
@given(
    initial=st.floats(0.0, 100.0),
    cap=st.floats(0.0, 1000.0),
    factor=st.floats(1.0, 10.0),
    jitter=st.floats(0.0, 1.0),
    count=st.integers(1, 40),
    seed=st.integers(0, 2**32),
)
def test_jittered_delays_stay_in_bounds(initial, cap, factor, jitter, count, seed):
    policy = RestartPolicy(
        backoff_initial=initial, backoff_max=cap, backoff_factor=factor, jitter=jitter
    )
    got = delays(policy, count, seed=seed)
    assert got[0] == 0.0
    for n, delay in enumerate(got[1:]):
        base = min(cap, initial * factor**n)
        assert 0.0 <= delay <= cap
        assert base * (1 - jitter) - 1e-9 <= delay <= base * (1 + jitter) + 1e-9


def test_intensity_allows_max_restarts_then_refuses():
    intensity = Intensity(RestartPolicy(max_restarts=3, window=60.0))
    assert [intensity.allow(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert intensity.allow(3.0) is False
    assert list(intensity.times) == [0.0, 1.0, 2.0]


def test_intensity_forgets_restarts_older_than_the_window():
    intensity = Intensity(RestartPolicy(max_restarts=2, window=10.0))
    assert intensity.allow(0.0)
    assert intensity.allow(5.0)
    assert not intensity.allow(9.9)
    # At 10.0 the restart at 0.0 leaves the window.
    assert intensity.allow(10.0)
    assert list(intensity.times) == [5.0, 10.0]
    assert not intensity.allow(14.0)
    assert intensity.allow(100.0)
    assert list(intensity.times) == [100.0]


def test_zero_max_restarts_never_restarts():
    intensity = Intensity(RestartPolicy(max_restarts=0))
    assert not intensity.allow(0.0)
    assert not intensity.allow(1e9)


@settings(max_examples=150, deadline=None)
@given(
    max_restarts=st.integers(0, 6),
    window=st.floats(0.5, 50.0),
    gaps=st.lists(st.floats(0.0, 20.0), max_size=40),
)
def test_intensity_matches_a_sliding_window_model(max_restarts, window, gaps):
    intensity = Intensity(RestartPolicy(max_restarts=max_restarts, window=window))
    now, accepted = 0.0, []
    for gap in gaps:
        now += gap
        recent = [t for t in accepted if t > now - window]
        expected = len(recent) < max_restarts
        assert intensity.allow(now) is expected
        if expected:
            accepted.append(now)
        assert len(intensity.times) <= max_restarts


def test_decide_gives_up_past_the_intensity_limit():
    policy = RestartPolicy(max_restarts=2, window=60.0, jitter=0.0, backoff_initial=1.0)
    backoff, intensity, rng = Backoff(policy), Intensity(policy), random.Random(1)
    first = decide(backoff, intensity, now=0.0, uptime=0.0, rng=rng)
    second = decide(backoff, intensity, now=1.0, uptime=0.0, rng=rng)
    third = decide(backoff, intensity, now=2.0, uptime=0.0, rng=rng)
    assert first == Decision(give_up=False, delay=0.0, reason="restart in 0.00 s")
    assert second == Decision(give_up=False, delay=1.0, reason="restart in 1.00 s")
    assert third.give_up
    assert third.delay == 0.0
    assert third.reason == "more than 2 restarts in 60 s"
    # Giving up records nothing: the backoff did not advance.
    assert backoff.failures == 2


def test_decide_restarts_again_once_the_window_has_passed():
    policy = RestartPolicy(max_restarts=1, window=5.0, jitter=0.0)
    backoff, intensity, rng = Backoff(policy), Intensity(policy), random.Random(1)
    assert not decide(backoff, intensity, now=0.0, uptime=0.0, rng=rng).give_up
    assert decide(backoff, intensity, now=4.0, uptime=0.0, rng=rng).give_up
    later = decide(backoff, intensity, now=6.0, uptime=20.0, rng=rng)
    assert later == Decision(give_up=False, delay=0.0, reason="restart in 0.00 s")


def test_default_policy_values():
    policy = RestartPolicy()
    assert (policy.max_restarts, policy.window) == (5, 60.0)
    assert (policy.backoff_initial, policy.backoff_max, policy.backoff_factor) == (0.5, 30.0, 2.0)
    assert (policy.jitter, policy.healthy_after) == (0.1, 10.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_restarts": -1},
        {"max_restarts": 1.5},
        {"window": 0},
        {"window": -1.0},
        {"window": float("nan")},
        {"backoff_initial": -0.1},
        {"backoff_max": -1},
        {"backoff_factor": 0.5},
        {"jitter": -0.01},
        {"jitter": 1.01},
        {"jitter": float("nan")},
        {"healthy_after": -1},
    ],
)
def test_validators_reject_bad_values(bad):
    with pytest.raises((ValueError, TypeError)):
        RestartPolicy(**bad)


@pytest.mark.parametrize(
    "good",
    [
        {"max_restarts": 0},
        {"backoff_initial": 0},
        {"jitter": 0},
        {"jitter": 1},
        {"healthy_after": 0},
    ],
)
def test_validators_accept_boundary_values(good):
    policy = RestartPolicy(**good)
    ((key, value),) = good.items()
    assert getattr(policy, key) == value


def test_policy_is_frozen():
    policy = RestartPolicy()
    with pytest.raises(AttributeError):
        policy.window = 1.0  # type: ignore[misc]
