"""The typed CSV read of the Azure format (replay/ingest/csv_blocks.py) gives exactly the log and the
quarantine of the text read; consecutive row-number ids are exactly Arrow's cast-and-join."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shadowreplay.replay.ingest import IngestOptions, ingest, quarantine_path
from shadowreplay.replay.ingest.batch import row_number_ids
from shadowreplay.replay.ingest.csv_blocks import CsvRecordReader
from shadowreplay.replay.ingest.formats import azure

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
TIMES = st.sampled_from(
    [
        "2023-11-16 18:15:46.1223877",
        "2023-11-16T18:15:46",
        "2023-11-16",
        "2023-11-16 18:15",
        " 2023-11-16 18:15:46",
        "2023-11-16T18:15:46Z",
        "2023-11-16T18:15:46+01:00",
        "1700158546.5",
        "2300-01-01",
        "2023-13-45 25:00:00",
        "",
        "nope",
    ]
)
COUNTS = st.one_of(
    st.integers(-5, 3000).map(str),
    st.sampled_from(["0", " 12", "12 ", "\t7", "-0", "0012", "+4", "0x10", "3.0", "1e3", "", "2147483648", "9" * 20]),
)
ROWS = st.lists(st.tuples(TIMES, COUNTS, COUNTS), min_size=1, max_size=30)


def ingest_both_ways(tmp_path: Path, name: str, text: str, block_bytes: int) -> list[tuple[list, list]]:
    """The log and quarantine rows of `text` ingested with the typed read and with the text read."""
    source = tmp_path / f"{name}.csv"
    source.write_text(text)
    results = []
    for typed in (True, False):
        output = tmp_path / f"{name}-{typed}.parquet"
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(azure, "CsvRecordReader", functools.partial(CsvRecordReader, block_bytes=block_bytes))
            if not typed:
                patch.setattr(azure, "_COLUMN_TYPES", {})
            ingest(source, output, IngestOptions(format="azure"))
        quarantine = quarantine_path(output)
        results.append(
            (
                pq.read_table(output).to_pylist() if output.exists() else [],
                pq.read_table(quarantine).to_pylist() if quarantine.exists() else [],
            )
        )
    return results


@settings(max_examples=60, deadline=None)
@given(ROWS, st.integers(40, 400))
# Arrow's integer parser reads hex and skips spaces; the text read accepts hex only where no value
# has spaces (its whole-column cast), so a block with both must not be read typed
@example([("2023-11-16 18:15:46", " 12", "0x10"), ("2023-11-16 18:15:47", "3", "4")], 400)
@example([("2023-11-16 18:15:46", "0X1A", "5"), ("2023-11-16 18:15:47", "3\t", "4")], 400)
def test_the_typed_read_keeps_and_quarantines_exactly_what_the_text_read_does(tmp_path_factory, rows, block_bytes):
    tmp_path = tmp_path_factory.mktemp("typed")
    text = AZURE_HEADER + "\n" + "".join(",".join(row) + "\n" for row in rows)
    (log_typed, quarantine_typed), (log_text, quarantine_text) = ingest_both_ways(tmp_path, "t", text, block_bytes)
    assert log_typed == log_text
    assert quarantine_typed == quarantine_text


def test_a_bad_row_in_a_typed_block_keeps_its_line_as_raw_text(tmp_path):
    lines = [f"2023-11-16 18:15:{second:02d}.0000000,{second + 1},{second % 7}" for second in range(50)]
    lines[17] = "2023-11-16 18:15:17.0000000,-3,4"
    lines[30] = "2023-11-16 18:15:30.0000000,5,2147483648"
    lines[31] = "2023-11-16 18:15:31.0000000, 6 ,\t1"
    source = tmp_path / "a.csv"
    source.write_text(AZURE_HEADER + "\n" + "\n".join(lines) + "\n")
    reader = CsvRecordReader(source, empty_is_null=False, column_types=azure._COLUMN_TYPES)
    assert all(pa.types.is_int64(block.columns["ContextTokens"].type) for block in reader.blocks())

    summary = ingest(source, tmp_path / "a.parquet", IngestOptions(format="azure"))
    assert summary.kept == 48
    rows = pq.read_table(quarantine_path(tmp_path / "a.parquet")).to_pylist()
    assert [(row["source_row"], row["field"], row["reason"], row["raw"]) for row in rows] == [
        (18, "prompt_tokens", "negative_token_count", lines[17]),
        (31, "completion_tokens", "token_count_out_of_range", lines[30]),
    ]
    log = pq.read_table(tmp_path / "a.parquet")
    assert log.column("prompt_tokens")[29].as_py() == 6 and log.column("completion_tokens")[29].as_py() == 1


@pytest.mark.parametrize(
    "first,count",
    [(1, 1), (0, 12), (95, 10), (998, 5), (1, 1500), (9990, 30), (999_999, 2), (123_456_789, 3000), (1, 300_000)],
)
def test_consecutive_row_numbers_give_the_ids_of_arrows_cast(first, count):
    rows = np.arange(first, first + count, dtype=np.int64)
    expected = pc.binary_join_element_wise("azure-", pc.cast(pa.array(rows), pa.string()), "")
    assert row_number_ids(rows, "azure").equals(expected)


@settings(deadline=None)
@given(st.integers(0, 10**12), st.integers(1, 3000))
def test_any_run_of_row_numbers_gives_the_ids_of_arrows_cast(first, count):
    rows = np.arange(first, first + count, dtype=np.int64)
    expected = pc.binary_join_element_wise("mooncake-", pc.cast(pa.array(rows), pa.string()), "")
    assert row_number_ids(rows, "mooncake").equals(expected)
