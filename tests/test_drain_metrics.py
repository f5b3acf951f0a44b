"""The autoscaler's metrics on a real server: in-flight requests and queue time per model.

docs/deployment.md ("Autoscaling on queue time") turns them into HPA metrics; every
metric it names must be served, and the in-flight gauge must count a request that
is under way and stop counting it once answered.
"""

from __future__ import annotations

import re
from functools import partial

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from supervisor.server import serve
from tests.docblocks import ROOT
from tests.test_oip_rest import wait_state
from tests.test_security import bearer, echo_model, read_keys, secure_config

pytestmark = pytest.mark.slow


def section(page: str, title: str) -> str:
    text = (ROOT / page).read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


async def test_in_flight_and_queue_time_as_the_autoscaling_section_names_them(
    nursery, tmp_path, handler_dir
):
    config = secure_config(tmp_path, echo_model(handler_dir))
    shutdown = trio.Event()
    urls = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    keys = read_keys(config)
    echo = (("model_name", "echo"), ("model_version", "1.0"))
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        await wait_state(client, f"{urls.management}/models/echo", keys, "READY")

        async def scrape() -> str:
            return (await client.get(f"{urls.metrics}/metrics")).text

        async def slow_request() -> None:
            r = await client.post(
                f"{urls.inference}/predictions/echo",
                content=b"sleep 2",
                headers={"Content-Type": "text/plain", **bearer(keys["inference"])},
            )
            assert r.status_code == 200

        async with trio.open_nursery() as requests:
            requests.start_soon(slow_request)
            with trio.fail_after(10):  # the request is on the worker for 2 s
                while True:
                    if samples(await scrape(), "supervisor_inflight_requests").get(echo) == 1:
                        break
                    await trio.sleep(0.02)
        served = await scrape()
    assert samples(served, "supervisor_inflight_requests")[echo] == 0
    assert samples(served, "supervisor_queue_latency_seconds_count")[echo] == 1
    named = set(
        re.findall(
            r"\bsupervisor_[a-z_]+", section("docs/deployment.md", "Autoscaling on queue time")
        )
    )
    named -= {"supervisor_queue_time_seconds_average"}  # the adapter's name for the average
    exposed = {s.name for family in text_string_to_metric_families(served) for s in family.samples}
    exposed |= {family.name for family in text_string_to_metric_families(served)}
    assert named, "the section names no metric"
    assert named <= exposed, sorted(named - exposed)
    shutdown.set()
