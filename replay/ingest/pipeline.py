"""One ingest: a source's batches, checked row by row, into the traffic log and the quarantine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from shadowreplay.replay.ingest.batch import SourceBatch
from shadowreplay.replay.ingest.duplicates import DuplicateIds
from shadowreplay.replay.ingest.formats.detect import open_reader
from shadowreplay.replay.ingest.log_writer import TrafficLogWriter
from shadowreplay.replay.ingest.options import IngestOptions, IngestSummary
from shadowreplay.replay.ingest.prefetch import prefetch
from shadowreplay.replay.ingest.problems import QuarantineRecord
from shadowreplay.replay.ingest.quarantine import QuarantineWriter, quarantine_path


def ingest(
    source: Path | str, output: Path | str, options: IngestOptions | None = None, *, run_rows: int | None = None
) -> IngestSummary:
    """Read `source`, write the traffic log `output` (rows in arrival order) and its quarantine
    file next to it; return what was kept and quarantined. Raises IngestError when the source
    cannot be read at all. `run_rows` bounds the rows sorted in memory at once (tests use small
    values to exercise the merge of runs)."""
    source, output = Path(source), Path(output)
    options = options or IngestOptions()
    reader = open_reader(source, options)
    output.parent.mkdir(parents=True, exist_ok=True)
    summary = IngestSummary(source=source, output=output, quarantine=quarantine_path(output), format=reader.name)
    quarantine = QuarantineWriter(summary.quarantine, str(source))
    log = TrafficLogWriter(output, **({"run_rows": run_rows} if run_rows else {}))
    duplicates = DuplicateIds() if reader.provides_request_ids else None
    try:
        for batch in prefetch(reader.batches()):
            for record in batch.unparsed:
                quarantine.add(record)
            kept = _keep_good_rows(batch, duplicates, quarantine)
            if kept is not None:
                log.write(kept)
        result = log.close()
        quarantine.close()
    except BaseException:
        log.abort()
        quarantine.abort()
        raise
    summary.kept = result.rows
    summary.quarantined = quarantine.counts
    summary.in_arrival_order = result.in_arrival_order
    summary.sorted_runs = 0 if result.in_arrival_order else result.runs
    return summary


def _keep_good_rows(
    batch: SourceBatch, duplicates: DuplicateIds | None, quarantine: QuarantineWriter
) -> pa.Table | None:
    """The batch's good rows (None when there are none); bad ones go to the quarantine."""
    problems = batch.problems
    if duplicates is not None:
        ids = batch.rows.column("request_id").combine_chunks()
        candidates = np.flatnonzero(~problems.bad_mask())
        repeated = duplicates.mark(ids, candidates)
        problems.flag_rows(
            repeated,
            "request_id",
            "duplicate_request_id",
            lambda i: f"request_id {ids[i].as_py()!r} was used by an earlier row",
        )
    if not problems:
        return batch.rows if batch.rows.num_rows else None
    for index, problem in problems.items():
        quarantine.add(
            QuarantineRecord(
                int(batch.source_rows[index]), problem.field, problem.reason, problem.detail, batch.raw_text(index)
            )
        )
    good = ~problems.bad_mask()
    return batch.rows.filter(good) if good.any() else None
