"""What the user asks of one ingest, and what it did."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

FORMATS = ("azure", "mooncake", "openai-jsonl", "table")

# The wall-clock origin of traces that carry only relative times (Mooncake) when --start is not
# given: a fixed instant, so that two ingests of one trace give identical logs.
DEFAULT_RELATIVE_START = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class IngestOptions:
    """`format`: one of FORMATS or `auto`. `column_map`: source column -> traffic-log field (table
    format only). `start`: wall-clock origin for
    relative times (Mooncake; numeric times of tables and request logs). `api`: the api of rows
    that carry no messages or prompt. `tag`: the tag of rows that have none."""

    format: str = "auto"
    column_map: dict[str, str] = field(default_factory=dict)
    start: datetime | None = None
    api: str = "chat"
    tag: str | None = None


@dataclass
class IngestSummary:
    """What one ingest did."""

    source: Path
    output: Path
    quarantine: Path
    format: str
    kept: int = 0
    quarantined: Counter = field(default_factory=Counter)
    in_arrival_order: bool = True
    sorted_runs: int = 0

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())
