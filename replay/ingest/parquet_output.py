"""How traffic logs are laid out in Parquet (shared by the run writer and the run merge)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shadowreplay.replay.schemas.traffic_log import TRAFFIC_LOG_SCHEMA

ARRIVAL_COLUMN_INDEX = TRAFFIC_LOG_SCHEMA.get_field_index("arrival_time")
# Low-cardinality columns get dictionary pages; ids and free text do not (it would only cost time).
DICTIONARY_COLUMNS = ["session_id", "api", "params", "tag"]
STATISTICS_COLUMNS = ["arrival_time", "prompt_tokens", "completion_tokens"]


def open_log_writer(path: Path) -> pq.ParquetWriter:
    """A ParquetWriter for traffic-log row groups, each sorted by arrival_time."""
    return pq.ParquetWriter(
        path,
        TRAFFIC_LOG_SCHEMA,
        use_dictionary=DICTIONARY_COLUMNS,
        write_statistics=STATISTICS_COLUMNS,
        sorting_columns=[pq.SortingColumn(ARRIVAL_COLUMN_INDEX)],
    )


def arrival_micros(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """The arrival_time column as int64 microseconds since the epoch."""
    column = table.column("arrival_time")
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.cast(pa.int64()).to_numpy()


def stable_order(micros: np.ndarray) -> np.ndarray | None:
    """Indices that sort `micros` stably, or None when it is already non-decreasing."""
    if micros.size < 2 or bool(np.all(micros[1:] >= micros[:-1])):
        return None
    return np.argsort(micros, kind="stable")
