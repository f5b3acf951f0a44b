"""Restart decisions (pure: plain numbers in, a decision out; never imports trio).

Two pieces of state, as in an OTP supervisor:

* ``Backoff``, one per worker slot: how long to wait before the next start.
  The first restart after a healthy run is immediate; each further consecutive
  failure doubles the delay up to a cap, with jitter so that slots do not
  restart in lock-step. A worker that stayed up ``healthy_after`` seconds
  resets its slot's backoff.
* ``Intensity``, one per model: the restart times in a sliding window. More
  than ``max_restarts`` restarts within ``window`` seconds and the model gives
  up (it becomes FAILED) instead of restarting again.
"""

from __future__ import annotations

import random
from collections import deque

import attrs

__all__ = ["Backoff", "Decision", "Intensity", "RestartPolicy", "decide"]

_number = attrs.validators.instance_of((int, float))  # so a string is named, not compared


@attrs.frozen
class RestartPolicy:
    """How a model's workers are restarted.

    Attributes:
        max_restarts: restarts allowed within ``window`` before the model is FAILED.
        window: the intensity window, in seconds.
        backoff_initial: the delay before the second consecutive restart, in seconds.
        backoff_max: the cap on any delay, in seconds.
        backoff_factor: the growth of the delay per consecutive failure.
        jitter: the delay is scaled by a random factor in ``[1 - jitter, 1 + jitter]``.
        healthy_after: seconds of uptime after which a worker's backoff resets.
    """

    max_restarts: int = attrs.field(
        default=5, validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)]
    )
    window: float = attrs.field(default=60.0, validator=[_number, attrs.validators.gt(0)])
    backoff_initial: float = attrs.field(default=0.5, validator=[_number, attrs.validators.ge(0)])
    backoff_max: float = attrs.field(default=30.0, validator=[_number, attrs.validators.ge(0)])
    backoff_factor: float = attrs.field(default=2.0, validator=[_number, attrs.validators.ge(1)])
    jitter: float = attrs.field(
        default=0.1,
        validator=[_number, attrs.validators.ge(0), attrs.validators.le(1)],
    )
    healthy_after: float = attrs.field(default=10.0, validator=[_number, attrs.validators.ge(0)])


@attrs.frozen
class Decision:
    """What to do after a worker exit.

    Attributes:
        give_up: true when the intensity limit is passed: the model is FAILED.
        delay: seconds to wait before starting the next incarnation.
        reason: a sentence for logs and describe output.
    """

    give_up: bool
    delay: float
    reason: str


@attrs.define
class Backoff:
    """A slot's consecutive-failure count and the delay it implies."""

    policy: RestartPolicy
    failures: int = 0

    def next_delay(self, uptime: float, rng: random.Random) -> float:
        """Record one exit after ``uptime`` seconds; return the delay before restarting."""
        if uptime >= self.policy.healthy_after:
            self.failures = 0
        self.failures += 1
        if self.failures == 1:
            return 0.0
        p = self.policy
        try:
            grown = p.backoff_initial * p.backoff_factor ** (self.failures - 2)
        except OverflowError:
            # A slot that keeps failing slowly (inside the intensity limit) for hours
            # would otherwise crash the restart loop once the power leaves float range.
            grown = p.backoff_max if p.backoff_initial else 0.0
        base = min(p.backoff_max, grown)
        return min(p.backoff_max, base * rng.uniform(1 - p.jitter, 1 + p.jitter))


@attrs.define
class Intensity:
    """Restart times of one model within the policy's sliding window."""

    policy: RestartPolicy
    times: deque[float] = attrs.field(factory=deque)

    def allow(self, now: float) -> bool:
        """Record a restart wanted at ``now``; false if it passes the limit."""
        while self.times and self.times[0] <= now - self.policy.window:
            self.times.popleft()
        if len(self.times) >= self.policy.max_restarts:
            return False
        self.times.append(now)
        return True


def decide(
    backoff: Backoff, intensity: Intensity, *, now: float, uptime: float, rng: random.Random
) -> Decision:
    """Decide what follows a worker exit at ``now`` after ``uptime`` seconds up."""
    p = intensity.policy
    if not intensity.allow(now):
        return Decision(
            give_up=True,
            delay=0.0,
            reason=f"more than {p.max_restarts} restarts in {p.window:g} s",
        )
    delay = backoff.next_delay(uptime, rng)
    return Decision(give_up=False, delay=delay, reason=f"restart in {delay:.2f} s")
