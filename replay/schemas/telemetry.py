"""Telemetry rows (shared/DESIGN.md, telemetry schema_version 1) and the shard writer the samplers use.

One row per sample, long form: `run_id`, `source` (`nvml` or `prometheus`), `host`, `device` (GPU
index or target name, as a string), `t_s` (seconds on the run's timeline, the results' clock),
`metric`, `value`. A new metric needs no schema change. Metric names:
- NVML: the `NVML_*` names below, in SI-like units (bytes, watts, joules, MHz, degrees C, percent).
- Prometheus: vLLM's sample names as exposed (`vllm:num_requests_running`,
  `vllm:prefix_cache_hits_total`, `vllm:time_to_first_token_seconds_sum`); a histogram bucket
  carries its upper bound the way the exposition format writes it:
  `vllm:time_to_first_token_seconds_bucket{le="0.05"}` (see `bucket_metric` / `parse_bucket_metric`).

`TelemetryShardWriter` buffers rows column by column and writes closed, self-contained Parquet
shards (temporary name, then rename) every `max_rows` rows or `max_age_s` seconds, so a sampler's
memory stays bounded however long the run and a crash loses at most one unwritten buffer.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
KIND = "telemetry"
METADATA_VERSION_KEY = b"shadowreplay.schema_version"
METADATA_KIND_KEY = b"shadowreplay.kind"

SOURCE_NVML = "nvml"
SOURCE_PROMETHEUS = "prometheus"
SOURCES = (SOURCE_NVML, SOURCE_PROMETHEUS)

NVML_GPU_UTIL = "gpu_util_pct"
NVML_MEM_UTIL = "mem_util_pct"
NVML_MEM_USED = "mem_used_bytes"
NVML_MEM_TOTAL = "mem_total_bytes"
NVML_POWER = "power_w"
NVML_ENERGY = "energy_j"  # the GPU's total energy counter since the driver loaded
NVML_SM_CLOCK = "sm_clock_mhz"
NVML_TEMPERATURE = "temperature_c"

TELEMETRY_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("host", pa.string(), nullable=False),
        pa.field("device", pa.string(), nullable=False),
        pa.field("t_s", pa.float64(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
    ],
    metadata={METADATA_VERSION_KEY: str(SCHEMA_VERSION).encode(), METADATA_KIND_KEY: KIND.encode()},
)

_BUCKET_METRIC = re.compile(r'^(?P<name>.+_bucket)\{le="(?P<le>[^"]+)"\}$')


def bucket_metric(sample_name: str, le: str) -> str:
    """The metric name of one histogram bucket: `NAME_bucket{le="0.05"}` (le as the server wrote it)."""
    return f'{sample_name}{{le="{le}"}}'


def parse_bucket_metric(metric: str) -> tuple[str, float] | None:
    """(`NAME_bucket`, upper bound) for a bucket metric name (inf for "+Inf"); None for any other name."""
    match = _BUCKET_METRIC.match(metric)
    if match is None:
        return None
    return match.group("name"), float(match.group("le"))


class TelemetryShardWriter:
    """Buffers telemetry rows of one run and one host and writes closed Parquet shards.

    Safe to call from a sampling thread and a control thread at once. Shards are named
    `<shard_prefix>-<seq>.parquet` in `telemetry_dir`; give each writer of a run its own prefix.
    """

    def __init__(
        self,
        telemetry_dir: str | Path,
        run_id: str,
        host: str,
        shard_prefix: str,
        max_rows: int = 50_000,
        max_age_s: float = 30.0,
    ):
        self.telemetry_dir = Path(telemetry_dir)
        self.telemetry_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self.host = host
        self.shard_prefix = shard_prefix
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.rows_written = 0
        self.files: list[Path] = []
        self._lock = threading.Lock()
        self._seq = 0
        self._oldest: float | None = None
        self._source: list[str] = []
        self._device: list[str] = []
        self._t_s: list[float] = []
        self._metric: list[str] = []
        self._value: list[float] = []

    def add(self, source: str, device: str, t_s: float, metric: str, value: float) -> None:
        """Queue one sample; writes a shard when the buffer reaches `max_rows`."""
        with self._lock:
            if self._oldest is None:
                self._oldest = time.monotonic()
            self._source.append(source)
            self._device.append(device)
            self._t_s.append(t_s)
            self._metric.append(metric)
            self._value.append(value)
            full = len(self._t_s) >= self.max_rows
        if full:
            self.flush()

    def buffered(self) -> int:
        """Rows queued and not yet written."""
        with self._lock:
            return len(self._t_s)

    def flush_if_due(self) -> int:
        """Write the buffer if its oldest row has waited `max_age_s`; returns the rows written."""
        with self._lock:
            due = self._oldest is not None and time.monotonic() - self._oldest >= self.max_age_s
        return self.flush() if due else 0

    def flush(self) -> int:
        """Write every queued row to a new closed shard; returns the rows written."""
        with self._lock:
            if not self._t_s:
                return 0
            n = len(self._t_s)
            columns = [
                pa.array([self.run_id] * n, pa.string()),
                pa.array(self._source, pa.string()),
                pa.array([self.host] * n, pa.string()),
                pa.array(self._device, pa.string()),
                pa.array(self._t_s, pa.float64()),
                pa.array(self._metric, pa.string()),
                pa.array(self._value, pa.float64()),
            ]
            self._source, self._device, self._t_s, self._metric, self._value = [], [], [], [], []
            self._oldest = None
            name = f"{self.shard_prefix}-{self._seq:05d}.parquet"
            self._seq += 1
            table = pa.Table.from_arrays(columns, schema=TELEMETRY_SCHEMA)
            tmp = self.telemetry_dir / f".{name}.tmp"
            pq.write_table(table, tmp, compression="zstd")
            final = self.telemetry_dir / name
            os.replace(tmp, final)
            self.files.append(final)
            self.rows_written += n
            return n

    def close(self) -> int:
        """Write what is left; returns the rows written."""
        return self.flush()
