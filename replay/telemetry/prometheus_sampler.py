"""Server telemetry: scrapes vLLM's Prometheus `/metrics` endpoints at 1 Hz with aiohttp.

Kept (VLLM_FAMILIES): running and waiting requests, KV-cache usage, prefix-cache hits and queries,
preemptions, prompt and generation token counters, and vLLM's own TTFT and inter-token-latency
histograms (every bucket, `_sum` and `_count`). Rows use vLLM's sample names (schema.py explains
bucket names); labels other than `le` (engine, model_name) are summed over, except `*_perc` gauges,
which are averaged (several engines of one server). Each scrape also gives Prometheus's own
synthetic series: `up` (1: scraped, 0: failed) and `scrape_duration_seconds`.

Parsing is prometheus_client's (`text_string_to_metric_families`): only the lines of the kept
families are handed to it, each series once per sampler (MetricsPageParser); later scrapes read
only the values of the series already parsed.
A failed scrape (connection refused, HTTP error, timeout, unparsable page) is counted per target,
logged when a target goes down and when it comes back, and never stops the sampler.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from shadowreplay.replay.schemas.telemetry import SOURCE_PROMETHEUS, TelemetryShardWriter, bucket_metric
from shadowreplay.replay.telemetry import RunClock

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.0

VLLM_FAMILIES: tuple[str, ...] = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",  # vLLM V1 (0.32 has this one)
    "vllm:gpu_cache_usage_perc",  # older vLLM
    "vllm:prefix_cache_hits",
    "vllm:prefix_cache_queries",
    "vllm:gpu_prefix_cache_hits",  # older vLLM
    "vllm:gpu_prefix_cache_queries",  # older vLLM
    "vllm:num_preemptions",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",  # vLLM V1
    "vllm:time_per_output_token_seconds",  # older vLLM's name for the same histogram
)
"""Metric families kept from a vLLM /metrics page (Prometheus family names: counters without _total)."""

UP = "up"
SCRAPE_DURATION = "scrape_duration_seconds"
FAILURE_KINDS = ("connection_error", "http_error", "timeout", "parse_error")


def _sample_names(families: Iterable[str]) -> frozenset[str]:
    """Every sample (and TYPE line) name the families can expose, `_created` excluded."""
    suffixes = ("", "_total", "_bucket", "_count", "_sum")
    return frozenset(family + suffix for family in families for suffix in suffixes)


def _line_name(line: str) -> str | None:
    """The metric name a line of the text format is about; None for HELP, other comments and blanks."""
    if line.startswith("# TYPE "):
        parts = line.split(None, 3)
        return parts[2] if len(parts) > 2 else None
    if not line or line.startswith("#"):
        return None
    end = len(line)
    for stop in ("{", " "):
        at = line.find(stop)
        if 0 <= at < end:
            end = at
    return line[:end]


def _split_sample(line: str) -> tuple[str, str]:
    """A sample line -> (series: the name and its labels as written, the rest: value [timestamp])."""
    brace, space = line.find("{"), line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        close = line.rfind("}")
        if close < brace:
            raise ValueError(f"no closing brace in sample line {line[:120]!r}")
        return line[: close + 1], line[close + 1 :]
    if space == -1:
        raise ValueError(f"no value in sample line {line[:120]!r}")
    return line[:space], line[space:]


def _series_metric(line: str) -> str | None:
    """The row metric of one sample line (parsed by prometheus_client); None for `_created` samples."""
    samples = [sample for family in text_string_to_metric_families(line + "\n") for sample in family.samples]
    if len(samples) != 1:
        raise ValueError(f"not one sample in line {line[:120]!r}")
    sample = samples[0]
    if sample.name.endswith("_created"):
        return None
    le = sample.labels.get("le")
    return bucket_metric(sample.name, le) if sample.name.endswith("_bucket") and le is not None else sample.name


class MetricsPageParser:
    """(metric, value) pairs for the kept families of a Prometheus text page, labels folded as the
    module says.

    A series (a sample's name and labels, e.g. `vllm:time_to_first_token_seconds_bucket{engine="0",
    le="0.1",model_name="m"}`) is parsed by prometheus_client the first time it appears; a page
    repeats the same series every scrape, so later scrapes only read each kept line's value (the
    first field after the series, a float in the text format's spelling: 3, 1e-3, NaN, +Inf). This
    memory makes a scrape of vLLM's page about 5x cheaper than parsing it whole every second.
    One parser per sampler thread (not thread-safe)."""

    def __init__(self, families: Iterable[str] = VLLM_FAMILIES):
        self.families = tuple(families)
        self._wanted = _sample_names(self.families)
        self._series: dict[str, str | None] = {}

    def parse(self, text: str) -> list[tuple[str, float]]:
        """Raises ValueError for a kept line that is not a valid sample."""
        totals: dict[str, float] = {}
        counts: Counter[str] = Counter()
        for line in text.splitlines():
            if not line.startswith(self.families) or _line_name(line) not in self._wanted:
                continue  # comments, blanks and other families (a cheap prefix test first)
            series, rest = _split_sample(line)
            try:
                metric = self._series[series]
            except KeyError:  # first sight of this series
                metric = self._series[series] = _series_metric(line)
            fields = rest.split()
            if not fields:
                raise ValueError(f"no value in sample line {line[:120]!r}")
            value = float(fields[0])
            if metric is None or math.isnan(value):
                continue
            totals[metric] = totals.get(metric, 0.0) + value
            counts[metric] += 1
        return [
            (metric, total / counts[metric] if metric.endswith("_perc") else total) for metric, total in totals.items()
        ]


def parse_metrics(text: str, families: Iterable[str] = VLLM_FAMILIES) -> list[tuple[str, float]]:
    """One page parsed with a fresh MetricsPageParser (no memory between calls)."""
    return MetricsPageParser(families).parse(text)


@dataclass(frozen=True)
class ScrapeTarget:
    """One endpoint to scrape: `name` (the target's name; the rows' `device`) and its /metrics URL."""

    name: str
    metrics_url: str


class PrometheusSampler:
    """Scrapes every target every `interval_s` on a thread of its own (its own event loop and aiohttp
    session) and writes long-form rows to `telemetry_dir`. Plain class, Ray-actor friendly: call
    start(clock), then stop() (flush() any time to write what is buffered)."""

    def __init__(
        self,
        run_id: str,
        telemetry_dir: str | Path,
        targets: Sequence[ScrapeTarget],
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        timeout_s: float | None = None,
        families: Sequence[str] = VLLM_FAMILIES,
        host: str | None = None,
        max_rows: int = 50_000,
        max_age_s: float = 30.0,
    ):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        names = [t.name for t in targets]
        if len(set(names)) != len(names):
            raise ValueError(f"scrape targets need distinct names, got {names}")
        self.run_id = run_id
        self.targets = tuple(targets)
        self.interval_s = interval_s
        self.timeout_s = timeout_s if timeout_s is not None else min(interval_s, 2.0)
        self.families = tuple(families)
        self._parser = MetricsPageParser(self.families)
        self.host = host or socket.gethostname()
        self._writer = TelemetryShardWriter(
            telemetry_dir, run_id, self.host, f"{SOURCE_PROMETHEUS}-{self.host}-{os.getpid()}", max_rows, max_age_s
        )
        self._clock: RunClock | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.scrapes: dict[str, Counter[str]] = {t.name: Counter() for t in self.targets}  # "ok" or a failure kind
        self.last_error: dict[str, str] = {}
        self._down: set[str] = set()
        self.rounds = 0
        self.late_ticks = 0
        self.thread_cpu_s = 0.0

    def start(self, clock: RunClock) -> None:
        """Start scraping on a background thread."""
        if self._thread is not None:
            raise RuntimeError("PrometheusSampler already started")
        self._clock = clock
        self._thread = threading.Thread(target=self._thread_main, name="prometheus-sampler", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _thread_main(self) -> None:
        asyncio.run(self._run())
        self.thread_cpu_s = time.thread_time()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            next_tick = time.perf_counter()
            while not self._stop.is_set():
                outcomes = await asyncio.gather(
                    *(self.scrape_once(session, target) for target in self.targets), return_exceptions=True
                )
                self.rounds += 1
                try:
                    self._writer.flush_if_due()
                except OSError as exc:  # a full disk must not end the run (that shard's rows are lost)
                    outcomes.append(exc)
                for outcome in outcomes:
                    if isinstance(outcome, Exception):
                        self.last_error["sampler"] = f"{type(outcome).__name__}: {outcome}"
                next_tick += self.interval_s
                now = time.perf_counter()
                if next_tick < now:  # a round overran (slow server): skip ticks instead of bursting
                    missed = int((now - next_tick) / self.interval_s) + 1
                    self.late_ticks += missed
                    next_tick += missed * self.interval_s
                try:
                    await asyncio.wait_for(self._stop.wait(), next_tick - now)
                except TimeoutError:
                    pass
            # A last round at stop: requests that finished after the previous scrape are in the
            # server's counters too, so the run's histograms cover every request
            # (analysis/telemetry/server_histograms.py).
            await asyncio.gather(*(self.scrape_once(session, t) for t in self.targets), return_exceptions=True)
            self.rounds += 1

    async def scrape_once(self, session: aiohttp.ClientSession, target: ScrapeTarget) -> int:
        """Scrape one target once and queue its rows; returns the rows queued. Never raises for
        what the server or the network does."""
        assert self._clock is not None, "start() first"
        sent = time.perf_counter()
        outcome, detail, pairs = "ok", "", []
        try:
            async with session.get(target.metrics_url) as response:
                body = (await response.read()).decode("utf-8", "replace")
                if response.status != 200:
                    outcome, detail = "http_error", f"HTTP {response.status}"
        except TimeoutError:
            outcome, detail = "timeout", f"no answer within {self.timeout_s:g} s"
        except aiohttp.ClientError as exc:
            outcome, detail = "connection_error", f"{type(exc).__name__}: {exc}"
        received = time.perf_counter()
        if outcome == "ok":
            try:
                pairs = self._parser.parse(body)
            except ValueError as exc:
                outcome, detail = "parse_error", f"unparsable metrics page: {exc}"
        t_s = self._clock.to_run_s((sent + received) / 2)
        self._record_outcome(target, outcome, detail)
        for metric, value in pairs:
            self._writer.add(SOURCE_PROMETHEUS, target.name, t_s, metric, value)
        self._writer.add(SOURCE_PROMETHEUS, target.name, t_s, UP, 1.0 if outcome == "ok" else 0.0)
        self._writer.add(SOURCE_PROMETHEUS, target.name, t_s, SCRAPE_DURATION, received - sent)
        return len(pairs) + 2

    def _record_outcome(self, target: ScrapeTarget, outcome: str, detail: str) -> None:
        self.scrapes[target.name][outcome] += 1
        if outcome == "ok":
            if target.name in self._down:
                self._down.discard(target.name)
                log.warning("metrics of %s answer again (%s)", target.name, target.metrics_url)
            return
        self.last_error[target.name] = f"{outcome}: {detail}"
        if target.name not in self._down:
            self._down.add(target.name)
            log.warning("cannot scrape %s (%s): %s; will keep trying", target.name, target.metrics_url, detail)

    def flush(self) -> int:
        """Write the buffered rows now; returns the rows written."""
        return self._writer.flush()

    def stop(self) -> dict:
        """Stop scraping, write what is buffered; returns stats()."""
        if self._thread is not None:
            assert self._loop is not None and self._stop is not None
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join()
            self._thread = None
        self.flush()
        return self.stats()

    def stats(self) -> dict:
        """Scrape counts per target and outcome, and what the sampler cost: for the manifest and the benchmark."""
        return {
            "source": SOURCE_PROMETHEUS,
            "host": self.host,
            "interval_s": self.interval_s,
            "rounds": self.rounds,
            "late_ticks": self.late_ticks,
            "scrapes": {name: dict(counts) for name, counts in self.scrapes.items()},
            "last_error": dict(self.last_error),
            "rows_written": self._writer.rows_written,
            "files": [str(p) for p in self._writer.files],
            "thread_cpu_s": self.thread_cpu_s,
        }
