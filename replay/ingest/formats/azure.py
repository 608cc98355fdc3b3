"""Azure LLM inference traces (Azure/AzurePublicDataset `AzureLLMInferenceTrace_*.csv`).

Columns: `TIMESTAMP` (wall clock with 7 decimals, UTC; any ISO 8601 form is accepted, see
replay/ingest/times.py), `ContextTokens` -> prompt_tokens, `GeneratedTokens` -> completion_tokens
(both required: an empty field is a `missing_value`; integral floats such as `374.0` are read as
integers, see replay/ingest/token_counts.py). Other columns are ignored. The trace has no
ids: request_id is `azure-<row>`, row being the 1-based data row. api is `--api` (chat by
default); tag is `--tag`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from shadowreplay.replay.ingest.batch import SourceBatch, canonical_table, constant_column, row_number_ids
from shadowreplay.replay.ingest.csv_blocks import CsvRecordReader
from shadowreplay.replay.ingest.errors import IngestError
from shadowreplay.replay.ingest.options import IngestOptions
from shadowreplay.replay.ingest.prefetch import prefetch
from shadowreplay.replay.ingest.problems import RowProblems
from shadowreplay.replay.ingest.times import arrival_times
from shadowreplay.replay.ingest.token_counts import token_counts

TIME_COLUMN = "TIMESTAMP"
PROMPT_TOKENS_COLUMN = "ContextTokens"
COMPLETION_TOKENS_COLUMN = "GeneratedTokens"
COLUMNS = (TIME_COLUMN, PROMPT_TOKENS_COLUMN, COMPLETION_TOKENS_COLUMN)
_COLUMN_TYPES = {
    TIME_COLUMN: pa.timestamp("ns"),
    PROMPT_TOKENS_COLUMN: pa.int64(),
    COMPLETION_TOKENS_COLUMN: pa.int64(),
}


class AzureTrace:
    """An Azure trace CSV as batches of traffic-log rows."""

    name = "azure"
    provides_request_ids = False

    def __init__(self, path: Path, options: IngestOptions):
        self.path = path
        self.options = options
        # typed where Arrow can: these types are read exactly as times.py and token_counts.py read the text
        self.reader = CsvRecordReader(path, empty_is_null=False, column_types=_COLUMN_TYPES)

    def batches(self) -> Iterator[SourceBatch]:
        checked = False
        for block in prefetch(self.reader.blocks()):
            if not checked:
                missing = [name for name in COLUMNS if name not in self.reader.header]
                if missing:
                    raise IngestError(
                        f"{self.path}: not an Azure trace: no column {', '.join(missing)} "
                        f"(header: {self.reader.header})"
                    )
                checked = True
            problems = RowProblems(block.num_rows)
            columns = {
                "request_id": row_number_ids(block.source_rows, self.name),
                "arrival_time": arrival_times(block.columns[TIME_COLUMN], "arrival_time", problems),
                "prompt_tokens": token_counts(
                    block.columns[PROMPT_TOKENS_COLUMN], "prompt_tokens", problems, required=True
                ),
                "completion_tokens": token_counts(
                    block.columns[COMPLETION_TOKENS_COLUMN], "completion_tokens", problems, required=True
                ),
                "api": constant_column(self.options.api, block.num_rows),
            }
            if self.options.tag is not None:
                columns["tag"] = constant_column(self.options.tag, block.num_rows)
            yield SourceBatch(
                canonical_table(columns, block.num_rows), block.source_rows, problems, block.raw_text, block.unparsed
            )
