"""The dashboard's model: the event log, the request series, the views (pure), and the
events the supervisor records (fake workers, virtual time)."""

from __future__ import annotations

import orjson
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from trio.testing import MockClock

from supervisor.api.dashboard.view import models_view, sse_comment, sse_message
from supervisor.config import ModelConfig
from supervisor.errors import CanaryFailed, WorkerStartFailed
from supervisor.policy import RestartPolicy
from supervisor.supervision.core import open_supervisor
from supervisor.supervision.events import EVENT_KINDS, EventLog, exit_fields
from supervisor.supervision.metrics import LATENCY_BUCKETS
from supervisor.supervision.series import RequestSeries, quantile
from supervisor.supervision.stats import ExitRecord, ModelStats, WorkerStats
from tests.fakeworker import Behaviour, FakeLauncher
from tests.test_rollout import SAYS_PING, SAYS_PONG, model


def test_event_log_keeps_the_newest_events_with_gapless_numbers():
    log = EventLog(capacity=3, clock=lambda: 100.0)
    for i in range(5):
        log.record("worker.started", "m", "1.0", f"started {i}", worker=f"w1#{i + 1}", pid=i)
    kept = log.recent()
    assert [e.seq for e in kept] == [3, 4, 5]
    assert [e.message for e in log.recent(2)] == ["started 3", "started 4"]
    assert kept[-1].to_json() == {
        "seq": 5,
        "time": 100.0,
        "kind": "worker.started",
        "model": "m",
        "version": "1.0",
        "worker": "w1#5",
        "message": "started 4",
        "pid": 4,
    }


def test_event_log_tells_subscribers_until_they_stop():
    log = EventLog()
    heard: list[str] = []
    stop = log.subscribe(lambda e: heard.append(e.kind))
    assert log.subscribers == 1
    log.record("model.failed", "m", "1.0", "FAILED: crash loop")
    stop()
    stop()  # twice is harmless
    log.record("worker.died", "m", "1.0", "w1#1 ended")
    assert heard == ["model.failed"]
    assert log.subscribers == 0


def test_unknown_event_kinds_are_refused():
    with pytest.raises(ValueError, match=r"unknown event kind 'worker\.exploded'"):
        EventLog().record("worker.exploded", "m", "1.0", "boom")
    assert len(set(EVENT_KINDS)) == len(EVENT_KINDS)


def test_exit_fields_say_signal_or_exit_code():
    killed = ExitRecord("the process exited", -9, 2.5, 0.0, (), incarnation=1, pid=42)
    assert exit_fields(killed) == {
        "pid": 42,
        "reason": "the process exited",
        "exitCode": None,
        "signal": 9,
        "uptime": 2.5,
    }
    exited = ExitRecord("the process exited", 3, 1.0, 0.0, ())
    assert exit_fields(exited)["exitCode"] == 3
    assert exit_fields(exited)["signal"] is None


def test_quantile_interpolates_within_a_bucket():
    bounds = (0.01, 0.02, 0.04)
    assert quantile(0.5, bounds, [0, 0, 0, 0]) is None
    assert quantile(0.5, bounds, [10, 0, 0, 0]) == pytest.approx(0.005)
    assert quantile(0.5, bounds, [0, 10, 0, 0]) == pytest.approx(0.015)
    assert quantile(0.99, bounds, [90, 0, 10, 0]) == pytest.approx(0.02 + 0.02 * 9 / 10)
    assert quantile(0.99, bounds, [0, 0, 0, 5]) == 0.04  # beyond the last bound: the last bound


@given(st.lists(st.integers(0, 50), min_size=4, max_size=4), st.floats(0.01, 1.0))
def test_quantile_stays_within_the_buckets_that_hold_answers(counts, q):
    bounds = (0.01, 0.02, 0.04)
    value = quantile(q, bounds, counts)
    if sum(counts) == 0:
        assert value is None
    else:
        assert value is not None
        assert 0.0 <= value <= bounds[-1]


def _counts(*pairs: tuple[int, int]) -> tuple[int, ...]:
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    for index, count in pairs:
        counts[index] = count
    return tuple(counts)


def test_request_series_turns_cumulative_counts_into_rates():
    series = RequestSeries(LATENCY_BUCKETS, capacity=2)
    ok, bad = ("m", "1.0", "200", "rest"), ("m", "1.0", "503", "rest")
    series.add(10.0, [(ok, _counts((1, 5)))])  # the starting point: no sample yet
    assert series.samples("m", "1.0") == ()
    series.add(12.0, [(ok, _counts((1, 25))), (bad, _counts((0, 4)))])
    sample = series.latest("m", "1.0")
    assert sample is not None
    assert sample.rps == pytest.approx(12.0)  # (20 + 4) answers in 2 s
    assert sample.errors == pytest.approx(2.0)
    assert sample.p50 is not None
    assert LATENCY_BUCKETS[0] <= sample.p50 <= LATENCY_BUCKETS[1]
    series.add(13.0, [(ok, _counts((1, 25))), (bad, _counts((0, 4)))])
    quiet = series.latest("m", "1.0")
    assert quiet is not None
    assert (quiet.rps, quiet.errors, quiet.p50, quiet.p99) == (0.0, 0.0, None, None)
    series.add(14.0, [(ok, _counts((1, 26))), (bad, _counts((0, 4)))])
    assert [s.time for s in series.samples("m", "1.0")] == [13.0, 14.0]  # a ring of 2
    assert series.latest("other", "1.0") is None


def test_a_sample_is_json_in_milliseconds():
    series = RequestSeries((0.01, 0.02))
    key = ("m", "1", "200", "rest")
    series.add(0.0, [])
    series.add(1.0, [(key, (0, 4, 0))])
    sample = series.latest("m", "1")
    assert sample is not None
    assert sample.to_json() == {"time": 1.0, "rps": 4.0, "errors": 0.0, "p50": 15.0, "p99": 19.9}


def test_the_model_view_names_workers_as_errors_do():
    exit_record = ExitRecord("the process exited", -9, 3.0, 50.0, ("bye",), incarnation=1, pid=41)
    worker = WorkerStats("w1", 42, 2, "READY", 60.0, 1, 7, exit_record, ("hello",))
    stats = ModelStats(
        config=ModelConfig(name="m", handler="h", workers=1),
        state="READY",
        is_default=True,
        failure=None,
        failure_log_tail=(),
        workers=(worker,),
        restarts=1,
        queue_depth=3,
        queue_capacity=100,
        requests=9,
        loaded_at=0.0,
    )
    [view] = models_view([stats], RequestSeries(LATENCY_BUCKETS), lambda pid: 1024)
    assert view["queue"] == {"depth": 3, "capacity": 100}
    [w] = view["workers"]
    assert (w["label"], w["pid"], w["memory"], w["batches"]) == ("w1#2", 42, 1024, 7)
    assert w["lastExit"]["signal"] == 9
    assert w["lastExit"]["summary"] == "the process exited (killed by signal 9 (SIGKILL))"
    assert view["sample"] is None


def test_server_sent_events_framing():
    message = sse_message("event", {"kind": "worker.died", "text": "a\nb"})
    head, data, end = message.split(b"\n", 2)
    assert head == b"event: event"
    assert orjson.loads(data.removeprefix(b"data: ")) == {"kind": "worker.died", "text": "a\nb"}
    assert end == b"\n"
    assert sse_comment("ping") == b": ping\n\n"


async def test_the_supervisor_records_starts_updates_canaries_and_rollbacks(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    async with open_supervisor(launcher=FakeLauncher(nursery)) as sup:
        await sup.load_model(model("1.0"))
        with pytest.raises(CanaryFailed):
            await sup.update(model("2.0"), canaries=[SAYS_PONG])
        await sup.update(model("3.0"), canaries=[SAYS_PING])
        seen = [(e.kind, e.version, e.worker) for e in sup.events.recent()]
    assert seen[:7] == [
        ("worker.started", "1.0", "w1#1"),
        ("worker.started", "2.0", "w1#1"),
        ("canary.failed", "2.0", None),
        ("update.rolled_back", "2.0", None),
        ("worker.stopped", "2.0", "w1#1"),
        ("worker.started", "3.0", "w1#1"),
        ("update.switched", "3.0", None),
    ]


async def test_a_crash_loop_is_recorded_as_deaths_then_failed(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    fail = Behaviour(load="fail")
    launcher = FakeLauncher(nursery, behaviours=[fail, fail])
    async with open_supervisor(launcher=launcher, wait=False) as sup:
        await sup.load_model(model("1.0", restart=RestartPolicy(max_restarts=1)), wait=False)
        with pytest.raises(WorkerStartFailed):
            await sup.pool("m").wait_ready()  # returns by raising once the model is FAILED
        seen = [(e.kind, e.worker) for e in sup.events.recent()]
        [failed] = [e for e in sup.events.recent() if e.kind == "model.failed"]
    assert seen == [("worker.died", "w1#1"), ("worker.died", "w1#2"), ("model.failed", None)]
    assert "more than 1 restarts" in failed.message
    assert dict(sup.events.recent()[0].fields)["exitCode"] == 1
