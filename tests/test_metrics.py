"""Metrics: rendering from hand-made snapshots, and one scrape of a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import partial

import attrs
import httpx
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from supervisor import ModelConfig, ServerConfig, open_supervisor
from supervisor.api.metrics import metrics_app
from supervisor.supervision.metrics import (
    BATCH_SIZE_BUCKETS,
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    MODEL_STATES,
    WORKER_STATES,
    Metrics,
)
from supervisor.supervision.pool import ModelState
from supervisor.supervision.stats import ModelStats, WorkerStats
from supervisor.supervision.worker import WorkerState

HOST = "testhost"
IRIS = ModelConfig(name="iris", handler="handlers.builtin.iris")


def worker(wid: str = "w1", **changes) -> WorkerStats:
    base = WorkerStats(
        id=wid,
        pid=None,
        incarnation=1,
        state="READY",
        started_at=0.0,
        restarts=0,
        batches=0,
        last_exit=None,
        log_tail=(),
    )
    return attrs.evolve(base, **changes)


def model(*workers: WorkerStats, config: ModelConfig = IRIS, **changes) -> ModelStats:
    base = ModelStats(
        config=config,
        state="READY",
        is_default=True,
        failure=None,
        failure_log_tail=(),
        workers=workers,
        restarts=sum(w.restarts for w in workers),
        queue_depth=0,
        queue_capacity=config.job_queue_size,
        requests=0,
        loaded_at=0.0,
    )
    return attrs.evolve(base, **changes)


def make(*snapshot: ModelStats, **options) -> Metrics:
    return Metrics(lambda: snapshot, hostname=HOST, **options)


def scrape(metrics: Metrics, names: tuple[str, ...] = ()) -> dict[str, list[Sample]]:
    """The samples of every family, by family name (``_total`` stripped from counters)."""
    text = metrics.render(names)[0].decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    [match] = [s.value for s in samples if s.name == name and s.labels == labels]
    return match


def test_torchserve_sample_lines_are_what_dashboards_query():
    metrics = make(model())
    metrics.observe_request("iris", "default", 200, 0.25, 0.001)
    metrics.observe_request("iris", "default", 503, 0.01, None)
    for status in (200, 200, 404, 500):
        metrics.count_response(status)
    text = metrics.render()[0].decode()
    ts = 'hostname="testhost",model_name="iris",model_version="default"'
    host = 'Hostname="testhost",Level="Host"'
    for line in (
        "# TYPE ts_inference_requests_total counter",
        f"ts_inference_requests_total{{{ts}}} 2.0",
        f"ts_inference_latency_microseconds{{{ts}}} 250000.0",
        f"ts_queue_latency_microseconds{{{ts}}} 1000.0",
        f"Requests2XX{{{host}}} 2.0",
        f"Requests4XX{{{host}}} 1.0",
        f"Requests5XX{{{host}}} 1.0",
    ):
        assert line in text.splitlines()
    for name in ("CPUUtilization", "MemoryUsed", "MemoryAvailable", "MemoryUtilization"):
        assert re.search(rf"^{name}\{{{host}\}} \d", text, re.MULTILINE), name
    for name in ("DiskUsage", "DiskAvailable", "DiskUtilization"):
        assert re.search(rf"^{name}\{{{host}\}} \d", text, re.MULTILINE), name
    assert "_created" not in text


def test_latency_counters_sum_successes_only_and_every_request_counts():
    metrics = make()
    metrics.observe_request("m", "1.0", 200, 0.5, 0.25)
    metrics.observe_request("m", "1.0", 503, 2.0, None)
    metrics.observe_request("m", "1.0", 500, 3.0, 1.0)
    metrics.observe_request("m", "1.0", 201, 0.5, None)  # never queued: adds no queue time
    families = scrape(metrics)
    labels = {"model_name": "m", "model_version": "1.0", "hostname": HOST}
    assert value(families["ts_inference_requests"], "ts_inference_requests_total", **labels) == 4
    latency = families["ts_inference_latency_microseconds"]
    assert value(latency, "ts_inference_latency_microseconds", **labels) == 1_000_000
    queue = families["ts_queue_latency_microseconds"]
    assert value(queue, "ts_queue_latency_microseconds", **labels) == 250_000


def test_response_classes_start_at_zero_and_ignore_1xx_3xx():
    metrics = make()
    assert all(scrape(metrics)[f"Requests{c}XX"][0].value == 0 for c in (2, 4, 5))
    for status in (101, 204, 302, 413, 499, 503, 507):
        metrics.count_response(status)
    families = scrape(metrics)
    host = {"Level": "Host", "Hostname": HOST}
    assert [value(families[f"Requests{c}XX"], f"Requests{c}XX", **host) for c in (2, 4, 5)] == [
        1,
        2,
        2,
    ]


def test_request_latency_histogram_buckets_are_seconds_labelled_by_code():
    metrics = make()
    for latency in (0.0005, 0.001, 0.003, 0.2, 100.0):
        metrics.observe_request("m", "2", 200, latency, None)
    metrics.observe_request("m", "2", 503, 0.004, None)
    samples = scrape(metrics)["supervisor_request_latency_seconds"]
    ok = {"model_name": "m", "model_version": "2", "code": "200", "protocol": "rest"}
    by_le = {
        s.labels["le"]: s.value
        for s in samples
        if s.name.endswith("_bucket") and s.labels["code"] == "200"
    }
    assert len(by_le) == len(LATENCY_BUCKETS) + 1
    assert by_le["0.001"] == 2  # le is inclusive
    assert by_le["0.0025"] == 2
    assert by_le["0.005"] == 3
    assert by_le["0.25"] == 4
    assert by_le["60.0"] == 4
    assert by_le["+Inf"] == 5
    assert value(samples, "supervisor_request_latency_seconds_count", **ok) == 5
    assert value(samples, "supervisor_request_latency_seconds_sum", **ok) == pytest.approx(100.2045)
    failed = {"model_name": "m", "model_version": "2", "code": "503", "protocol": "rest"}
    assert value(samples, "supervisor_request_latency_seconds_count", **failed) == 1
    metrics.observe_request("m", "2", 200, 0.004, None, "oip-grpc")
    samples = scrape(metrics)["supervisor_request_latency_seconds"]
    grpc = {**ok, "protocol": "oip-grpc"}
    assert value(samples, "supervisor_request_latency_seconds_count", **grpc) == 1
    assert value(samples, "supervisor_request_latency_seconds_count", **ok) == 5


def test_queue_histogram_only_counts_requests_that_reached_a_worker():
    metrics = make()
    metrics.observe_request("m", "1.0", 200, 0.1, 0.02)
    metrics.observe_request("m", "1.0", 503, 0.0, None)
    samples = scrape(metrics)["supervisor_queue_latency_seconds"]
    labels = {"model_name": "m", "model_version": "1.0"}
    assert value(samples, "supervisor_queue_latency_seconds_count", **labels) == 1
    assert value(samples, "supervisor_queue_latency_seconds_sum", **labels) == pytest.approx(0.02)
    assert value(samples, "supervisor_queue_latency_seconds_bucket", **labels, le="0.01") == 0
    assert value(samples, "supervisor_queue_latency_seconds_bucket", **labels, le="0.025") == 1


def test_batch_size_histogram():
    metrics = make()
    for size in (1, 1, 3, 8, 300):
        metrics.observe_batch("m", "1.0", size)
    samples = scrape(metrics)["supervisor_batch_size"]
    labels = {"model_name": "m", "model_version": "1.0"}
    buckets = {s.labels["le"]: s.value for s in samples if s.name == "supervisor_batch_size_bucket"}
    assert list(buckets) == [*(f"{b}.0" for b in BATCH_SIZE_BUCKETS), "+Inf"]
    assert (buckets["1.0"], buckets["2.0"], buckets["4.0"], buckets["8.0"]) == (2, 2, 3, 4)
    assert buckets["+Inf"] == 5
    assert value(samples, "supervisor_batch_size_sum", **labels) == 313


@given(st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), min_size=1))
def test_histogram_buckets_are_cumulative_and_complete(latencies):
    metrics = make(system=False)
    for latency in latencies:
        metrics.observe_request("m", "1.0", 200, latency, None)
    samples = scrape(metrics)["supervisor_request_latency_seconds"]
    counts = [s.value for s in samples if s.name.endswith("_bucket")]
    assert counts == sorted(counts)
    assert counts[-1] == len(latencies)
    for bound, count in zip(LATENCY_BUCKETS, counts, strict=False):
        assert count == sum(1 for x in latencies if x <= bound)


def test_supervision_metrics_from_snapshots():
    live = worker("w1", pid=os.getpid(), incarnation=3, restarts=2, state="BUSY")
    starting = worker("w2", pid=None, state="STARTING")
    v2 = attrs.evolve(IRIS, version="2.0")
    families = scrape(
        make(
            model(live, starting, queue_depth=7),
            model(config=v2, state="FAILED", failure="gave up"),
        )
    )
    w1 = {"model_name": "iris", "model_version": "1.0", "worker_id": "w1"}
    w2 = {**w1, "worker_id": "w2"}
    assert (
        value(families["supervisor_worker_incarnation"], "supervisor_worker_incarnation", **w1) == 3
    )
    restarts = families["supervisor_worker_restarts"]
    assert value(restarts, "supervisor_worker_restarts_total", **w1) == 2
    assert value(restarts, "supervisor_worker_restarts_total", **w2) == 0
    states = families["supervisor_worker_state"]
    assert {s.labels["state"] for s in states if s.labels["worker_id"] == "w1"} == set(
        WORKER_STATES
    )
    assert [s.labels["state"] for s in states if s.labels["worker_id"] == "w1" and s.value] == [
        "BUSY"
    ]
    assert [s.labels["state"] for s in states if s.labels["worker_id"] == "w2" and s.value] == [
        "STARTING"
    ]
    model_states = {
        (s.labels["model_version"], s.labels["state"]): s.value
        for s in families["supervisor_model_state"]
    }
    assert len(model_states) == 2 * len(MODEL_STATES)
    assert {k for k, v in model_states.items() if v} == {("1.0", "READY"), ("2.0", "FAILED")}
    m1 = {"model_name": "iris", "model_version": "1.0"}
    assert value(families["supervisor_queue_depth"], "supervisor_queue_depth", **m1) == 7
    assert value(families["supervisor_queue_capacity"], "supervisor_queue_capacity", **m1) == 100
    [rss] = families["supervisor_worker_memory_bytes"]  # w2 has no pid: no sample
    assert rss.labels == w1
    assert rss.value > 1024 * 1024


def test_worker_memory_skips_a_process_that_is_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    families = scrape(make(model(worker(pid=child.pid))))
    assert families["supervisor_worker_memory_bytes"] == []


def test_an_unknown_state_is_still_reported():
    families = scrape(make(model(worker(state="ZOMBIE"), state="DRAINING")))
    assert [s.labels["state"] for s in families["supervisor_model_state"] if s.value] == [
        "DRAINING"
    ]
    assert [s.labels["state"] for s in families["supervisor_worker_state"] if s.value] == ["ZOMBIE"]


def test_state_label_sets_mirror_the_enums():
    assert tuple(s.value for s in ModelState) == MODEL_STATES
    assert tuple(s.value for s in WorkerState) == WORKER_STATES


def test_snapshots_are_taken_at_every_scrape():
    snapshots = [(model(worker(incarnation=1)),), (model(worker(incarnation=2)),), ()]
    calls = iter(snapshots)
    metrics = Metrics(lambda: next(calls), hostname=HOST, system=False)
    name = "supervisor_worker_incarnation"
    assert [s.value for s in scrape(metrics)[name]] == [1]
    assert [s.value for s in scrape(metrics)[name]] == [2]
    assert scrape(metrics)[name] == []  # the model was unloaded


def test_system_metrics_can_be_off_and_an_unreadable_disk_is_left_out(tmp_path):
    assert "CPUUtilization" not in scrape(make(system=False))
    families = scrape(make(disk_path=str(tmp_path / "missing")))
    assert "MemoryUsed" in families
    assert "DiskUsage" not in families
    [cpu] = families["CPUUtilization"]
    assert 0 <= cpu.value <= 100


def test_name_filter_keeps_only_the_named_metrics():
    metrics = make(model(worker()))
    metrics.observe_request("iris", "1.0", 200, 0.1, 0.01)
    families = scrape(metrics, ("ts_inference_requests_total", "Requests2XX", "nope"))
    assert set(families) == {"ts_inference_requests", "Requests2XX"}
    # a counter with no samples yet is still found by its exposed name
    assert set(scrape(make(), ("ts_inference_requests_total",))) == {"ts_inference_requests"}
    histogram = scrape(metrics, ("supervisor_queue_latency_seconds",))
    assert set(histogram) == {"supervisor_queue_latency_seconds"}


def test_registries_are_private():
    one, two = make(), make()
    one.count_response(200)
    assert scrape(one)["Requests2XX"][0].value == 1
    assert scrape(two)["Requests2XX"][0].value == 0
    assert b"Requests2XX" not in generate_latest(REGISTRY)


async def test_metrics_app_serves_and_counts_its_own_responses():
    metrics = make(model(worker()), system=False)
    client = metrics_app(metrics).test_client()
    first = await client.get("/metrics")
    assert first.status_code == 200
    assert first.headers["Content-Type"] == CONTENT_TYPE
    second = await client.get("/metrics", query_string={"name[]": "Requests2XX"})
    text = (await second.get_data()).decode()
    [family] = text_string_to_metric_families(text)
    assert family.samples[0].value == 1  # the first scrape
    assert (await client.get("/nowhere")).status_code == 404
    assert scrape(metrics)["Requests4XX"][0].value == 1


@pytest.mark.slow
async def test_scrape_a_real_supervisor(nursery):
    async with open_supervisor(ServerConfig(models=(IRIS,))) as sup:
        reply = await sup.predict("iris", b"[5.1, 3.5, 1.4, 0.2]")
        assert b"setosa" in reply.body
        metrics = Metrics(sup.statistics)
        config = HypercornConfig()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        stop = trio.Event()
        serve = partial(hypercorn_serve, metrics_app(metrics), config, shutdown_trigger=stop.wait)
        [url] = await nursery.start(serve)
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.get(f"{url}/metrics")
        finally:
            stop.set()
    assert response.status_code == 200
    families = {f.name: f.samples for f in text_string_to_metric_families(response.text)}
    w1 = {"model_name": "iris", "model_version": "1.0", "worker_id": "w1"}
    assert (
        value(families["supervisor_worker_incarnation"], "supervisor_worker_incarnation", **w1) == 1
    )
    [rss] = families["supervisor_worker_memory_bytes"]
    assert rss.labels == w1
    assert rss.value > 10 * 1024 * 1024  # a Python process with torch imported
    ready = [s.labels["state"] for s in families["supervisor_worker_state"] if s.value]
    assert ready == ["READY"]
    assert [s.labels["state"] for s in families["supervisor_model_state"] if s.value] == ["READY"]
