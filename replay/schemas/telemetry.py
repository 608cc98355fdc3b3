"""Telemetry rows (docs/DESIGN.md, telemetry schema_version 2) and the shard writer the samplers use.

One row per sample, long form: `run_id`, `source` (`nvml` or `prometheus`), `host`, `device` (GPU
index, or the server scraped: its target's name, `target#i` for replica i of a target of several,
see `server_device`), `t_s` (seconds on the run's timeline, the results' clock),
`metric`, `value`, and for a GPU its stable identity (version 2): `gpu_uuid` and `pci_bus_id`
(NVML's index need not match CUDA's nor survive a reboot; null for servers, and in version 1
files, which are still read). A new metric needs no schema change. Metric names:
- NVML: the `NVML_*` names below, in SI-like units (bytes, watts, joules, MHz, degrees C, percent).
- Prometheus: vLLM's sample names as exposed (`vllm:num_requests_running`,
  `vllm:prefix_cache_hits_total`, `vllm:time_to_first_token_seconds_sum`); a histogram bucket
  carries its upper bound the way the exposition format writes it:
  `vllm:time_to_first_token_seconds_bucket{le="0.05"}` (see `bucket_metric` / `parse_bucket_metric`).

`TelemetryShardWriter` commits the rows through the one shard writer (replay/schemas/shards.py)
every `max_rows` rows or `max_age_s` seconds, so a sampler's memory stays bounded however long the
run and a crash loses at most one unwritten buffer.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from shadowreplay.replay.schemas.contract import stamp
from shadowreplay.replay.schemas.shards import ShardWriter

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
ADDED_COLUMNS = {"gpu_uuid": 2, "pci_bus_id": 2}
"""Columns added after version 1, with the version that added them (read as null in older files)."""
KIND = "telemetry"

SOURCE_NVML = "nvml"
SOURCE_PROMETHEUS = "prometheus"
SOURCES = (SOURCE_NVML, SOURCE_PROMETHEUS)

NVML_GPU_UTIL = "gpu_util_pct"
NVML_MEM_UTIL = "mem_util_pct"
NVML_MEM_USED = "mem_used_bytes"
NVML_MEM_TOTAL = "mem_total_bytes"
NVML_MEM_RESERVED = "mem_reserved_bytes"  # the driver's reservation (memory info version 2), not in `used`
NVML_GPU_LOST = "gpu_lost"  # value 1 at the moment a GPU fell off the bus; it has no sample after it
NVML_POWER = "power_w"  # nvmlDeviceGetPowerUsage: a 1 s average on Ampere and newer
NVML_POWER_INSTANT = "power_instant_w"  # NVML_FI_DEV_POWER_INSTANT (Hopper and newer): the draw now
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
        pa.field("gpu_uuid", pa.string()),
        pa.field("pci_bus_id", pa.string()),
    ],
    metadata=stamp(KIND, SCHEMA_VERSION),
)

REPLICA_MARK = "#"  # never in a target name (replay/targets/config.py: letters, digits, _ . -)


def server_device(target: str, replica: int | None) -> str:
    """The `device` of a scraped server's rows: the target's name, `target#i` for its replica i."""
    return target if replica is None else f"{target}{REPLICA_MARK}{replica}"


def device_server(device: str) -> tuple[str, int | None]:
    """The (target, replica) a prometheus row's `device` names (server_device's inverse)."""
    target, mark, replica = device.rpartition(REPLICA_MARK)
    return (target, int(replica)) if mark and replica.isdigit() else (device, None)


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
    """Telemetry rows of one run and one host, committed as shards by the one ShardWriter
    (replay/schemas/shards.py) as `<shard_prefix>-<seq>.parquet` in `telemetry_dir`; give each writer
    of a run its own prefix. Safe to call from a sampling thread and a control thread at once."""

    def __init__(
        self,
        telemetry_dir: str | Path,
        run_id: str,
        host: str,
        shard_prefix: str,
        max_rows: int = 50_000,
        max_age_s: float = 30.0,
    ):
        self.run_id = run_id
        self.host = host
        self._shards = ShardWriter(
            telemetry_dir, TELEMETRY_SCHEMA, shard_prefix, max_rows, max_age_s, to_table=self._to_table
        )

    @property
    def rows_written(self) -> int:
        return self._shards.rows_written

    @property
    def files(self) -> list[Path]:
        return self._shards.files

    def add(
        self,
        source: str,
        device: str,
        t_s: float,
        metric: str,
        value: float,
        gpu_uuid: str | None = None,
        pci_bus_id: str | None = None,
    ) -> None:
        """Queue one sample (a GPU's with its identity); writes a shard when the buffer reaches `max_rows`."""
        # a tuple: samplers add thousands a second
        self._shards.add((source, device, t_s, metric, value, gpu_uuid, pci_bus_id))

    def _to_table(self, rows: list[tuple]) -> pa.Table:
        """The samples as TELEMETRY_SCHEMA columns, run_id and host filled in."""
        n = len(rows)
        empty: tuple = ((),) * 7
        source, device, t_s, metric, value, gpu_uuid, pci_bus_id = zip(*rows) if rows else empty
        columns = [
            pa.array([self.run_id] * n, pa.string()),
            pa.array(source, pa.string()),
            pa.array([self.host] * n, pa.string()),
            pa.array(device, pa.string()),
            pa.array(t_s, pa.float64()),
            pa.array(metric, pa.string()),
            pa.array(value, pa.float64()),
            pa.array(gpu_uuid, pa.string()),
            pa.array(pci_bus_id, pa.string()),
        ]
        return pa.Table.from_arrays(columns, schema=TELEMETRY_SCHEMA)

    def buffered(self) -> int:
        """Rows queued and not yet written."""
        return self._shards.buffered()

    def flush_if_due(self) -> int:
        """Write the buffer if its oldest row has waited `max_age_s`; returns the rows written."""
        return self._shards.flush_if_due()

    def flush(self) -> int:
        """Write every queued row to a new committed shard; returns the rows written."""
        return self._shards.flush()

    def close(self) -> int:
        """Write what is left; returns the rows written."""
        return self._shards.close()
