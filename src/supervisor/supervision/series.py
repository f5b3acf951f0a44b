"""Request rate, errors and latency per model version over the last minutes.

``RequestSeries.add`` is given the latency histogram's cumulative bucket counts
(``Metrics.latency_counts``, what the request path records anyway) once a
second, and keeps one ``Sample`` per interval and model version in a ring
buffer: answers and errors per second and the p50/p99 latency, estimated from
the buckets as Prometheus's ``histogram_quantile`` does (linear within a
bucket). Nothing is added to the request path. Nothing here imports trio.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

import attrs

__all__ = ["RequestSeries", "Sample", "quantile"]

Counts = Sequence[int]
"""Bucket counts: ``counts[i]`` answers up to ``bounds[i]``; the last, the rest."""


@attrs.frozen
class Sample:
    """One interval of one model version.

    Attributes:
        time: the end of the interval (seconds since the epoch).
        rps: answers per second.
        errors: answers with a status of 400 or more, per second.
        p50: the median latency in seconds (None without answers).
        p99: the 99th percentile latency in seconds (None without answers).
    """

    time: float
    rps: float
    errors: float
    p50: float | None
    p99: float | None

    def to_json(self) -> dict[str, float | None]:
        """The sample as a JSON-ready dict (latencies in milliseconds)."""
        return {
            "time": round(self.time, 3),
            "rps": round(self.rps, 2),
            "errors": round(self.errors, 2),
            "p50": None if self.p50 is None else round(self.p50 * 1000, 3),
            "p99": None if self.p99 is None else round(self.p99 * 1000, 3),
        }


def quantile(q: float, bounds: Sequence[float], counts: Counts) -> float | None:
    """The ``q`` quantile of a histogram (None if it is empty).

    Linear within the bucket it falls in; in the last (unbounded) bucket, the
    last bound.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i >= len(bounds):
                return bounds[-1]
            low = bounds[i - 1] if i else 0.0
            return low + (bounds[i] - low) * (rank - seen) / count
        seen += count
    return bounds[-1]


class RequestSeries:
    """Per model version, a ring buffer of samples computed from cumulative counts.

    Args:
        bounds: the latency histogram's bucket bounds, in seconds.
        capacity: how many samples each model version keeps.
    """

    def __init__(self, bounds: Sequence[float], capacity: int = 300) -> None:
        self._bounds = tuple(bounds)
        self._capacity = capacity
        self._last: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        self._last_time: float | None = None
        self._samples: dict[tuple[str, str], deque[Sample]] = {}

    def add(self, now: float, series: Iterable[tuple[tuple[str, ...], Counts]]) -> None:
        """Take one reading: each latency series' labels (model, version, code, ...) and counts.

        The first reading only sets the starting point.
        """
        totals = _by_model(series, len(self._bounds) + 1)
        if self._last_time is not None and now > self._last_time:
            elapsed = now - self._last_time
            for key, (counts, errors) in totals.items():
                before, errors_before = self._last.get(key, ([0] * len(counts), [0]))
                diff = [a - b for a, b in zip(counts, before, strict=True)]
                self._append(key, self._sample(now, elapsed, diff, errors[0] - errors_before[0]))
        self._last, self._last_time = totals, now

    def _sample(self, now: float, elapsed: float, diff: list[int], errors: int) -> Sample:
        answers = sum(diff)
        p50 = quantile(0.5, self._bounds, diff)
        p99 = quantile(0.99, self._bounds, diff)
        return Sample(now, answers / elapsed, errors / elapsed, p50, p99)

    def _append(self, key: tuple[str, str], sample: Sample) -> None:
        samples = self._samples.get(key)
        if samples is None:
            samples = self._samples[key] = deque(maxlen=self._capacity)
        samples.append(sample)

    def samples(self, model: str, version: str) -> tuple[Sample, ...]:
        """The kept samples of one model version, oldest first."""
        return tuple(self._samples.get((model, version), ()))

    def latest(self, model: str, version: str) -> Sample | None:
        """The newest sample of one model version, if any."""
        samples = self._samples.get((model, version))
        return samples[-1] if samples else None


def _by_model(
    series: Iterable[tuple[tuple[str, ...], Counts]], width: int
) -> dict[tuple[str, str], tuple[list[int], list[int]]]:
    """Bucket counts summed over codes (and protocols), and the error count, per model version."""
    totals: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
    for labels, counts in series:
        model, version, code = labels[0], labels[1], labels[2]
        summed, errors = totals.setdefault((model, version), ([0] * width, [0]))
        for i, count in enumerate(counts):
            summed[i] += count
        if code.isdigit() and int(code) >= 400:
            errors[0] += sum(counts)
    return totals
