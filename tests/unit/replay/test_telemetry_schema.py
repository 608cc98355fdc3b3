"""The telemetry contract (long form, schema_version 2; version 1 files still read) and its bounded-memory
shard writer."""

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import shadowreplay.analysis.data.telemetry_data as reader
from shadowreplay.replay.schemas.telemetry import (
    TELEMETRY_SCHEMA,
    TelemetryShardWriter,
    bucket_metric,
    parse_bucket_metric,
)


def test_schema_has_designs_columns_and_version_metadata():
    assert TELEMETRY_SCHEMA.names == [
        *("run_id", "source", "host", "device", "t_s", "metric", "value"),
        *("gpu_uuid", "pci_bus_id"),  # version 2: a GPU's stable identity on every row
    ]
    assert TELEMETRY_SCHEMA.metadata[b"shadowreplay.schema_version"] == b"2"
    assert TELEMETRY_SCHEMA.metadata[b"shadowreplay.kind"] == b"telemetry"


def test_writer_rotates_closed_shards_and_keeps_every_row(tmp_path):
    writer = TelemetryShardWriter(tmp_path / "telemetry", "run-1", "node-a", "nvml-node-a-1", max_rows=40)
    for i in range(100):
        writer.add("nvml", str(i % 2), i * 0.1, "power_w", 100.0 + i)
    assert writer.buffered() == 20  # two shards of 40 written on the way
    assert writer.close() == 20
    assert [p.name for p in writer.files] == [f"nvml-node-a-1-{i:05d}.parquet" for i in range(3)]
    assert not list((tmp_path / "telemetry").glob(".*.tmp"))
    table = pq.read_table(writer.files[0])
    assert table.schema.equals(TELEMETRY_SCHEMA, check_metadata=True)
    rows = pq.ParquetDataset(writer.files).read().sort_by("t_s").to_pylist()
    assert len(rows) == writer.rows_written == 100
    assert rows[7] == {
        "run_id": "run-1",
        "source": "nvml",
        "host": "node-a",
        "device": "1",
        "t_s": pytest.approx(0.7),
        "metric": "power_w",
        "value": 107.0,
        "gpu_uuid": None,
        "pci_bus_id": None,
    }
    loaded = reader.load_telemetry(tmp_path)  # what analysis reads back
    assert loaded is not None and loaded.samples.height == 100


def test_a_gpus_identity_is_on_its_rows_and_version_1_files_still_read(tmp_path):
    writer = TelemetryShardWriter(tmp_path / "telemetry", "run-1", "node-a", "nvml-a")
    writer.add("nvml", "0", 0.5, "power_w", 300.0, "GPU-1234", "00000000:18:00.0")
    writer.close()
    old = pa.schema(
        list(TELEMETRY_SCHEMA)[:7], metadata={**TELEMETRY_SCHEMA.metadata, b"shadowreplay.schema_version": b"1"}
    )
    row = {"run_id": "run-1", "source": "nvml", "host": "node-b", "device": "3", "t_s": 1.0, "metric": "power_w"}
    pq.write_table(pa.Table.from_pylist([{**row, "value": 200.0}], schema=old), tmp_path / "telemetry" / "v1.parquet")
    samples = reader.load_telemetry(tmp_path).samples.sort("t_s")
    assert samples.select("device", "gpu_uuid", "pci_bus_id").rows() == [
        ("0", "GPU-1234", "00000000:18:00.0"),
        ("3", None, None),  # a version 1 file: no identity, read as null
    ]


def test_writer_flushes_by_age(tmp_path):
    writer = TelemetryShardWriter(tmp_path, "run-1", "node-a", "p", max_age_s=0.0)
    assert writer.flush_if_due() == 0  # nothing buffered
    writer.add("prometheus", "vllm", 1.0, "up", 1.0)
    assert writer.flush_if_due() == 1 and len(writer.files) == 1
    writer.add("prometheus", "vllm", 2.0, "up", 1.0)
    slow = TelemetryShardWriter(tmp_path, "run-1", "node-a", "q", max_age_s=3600)
    slow.add("prometheus", "vllm", 1.0, "up", 1.0)
    assert slow.flush_if_due() == 0 and slow.buffered() == 1


def test_bucket_metric_names_round_trip():
    name = bucket_metric("vllm:time_to_first_token_seconds_bucket", "0.05")
    assert name == 'vllm:time_to_first_token_seconds_bucket{le="0.05"}'
    assert parse_bucket_metric(name) == ("vllm:time_to_first_token_seconds_bucket", 0.05)
    assert parse_bucket_metric('x_bucket{le="+Inf"}') == ("x_bucket", math.inf)
    assert parse_bucket_metric("vllm:time_to_first_token_seconds_sum") is None
