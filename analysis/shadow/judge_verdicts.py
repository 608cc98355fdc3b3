"""The verdicts of a shadow's judge (`scorer: judge`, analysis/shadow/gates_file.py JudgeSpec): its run
(RUN_DIR/judge, a run directory like any other: every call a result row, with its cost) read back as one
verdict per answer judged. A judge request's id names the answer: `<request_id>|<side target>`
(replay/schemas/shadow_requests.py JUDGE_ID_SEPARATOR).

correct = the judge's reply holds `pass_pattern` (a regex, case ignored), over its final `ok` rows; null
where the judge's call failed (the answer is not scored, rather than counted wrong for the judge's fault).
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from shadowreplay.analysis.data.run_data import load_run
from shadowreplay.replay.schemas.shadow_requests import JUDGE_ID_SEPARATOR


def judge_verdicts(judge_dir: Path, pass_pattern: str) -> pl.DataFrame:
    """`request_id`, `target` (the side whose answer was judged), `correct` (Boolean, null where the call failed),
    `judge_reply`, one row per answer judged."""
    run = load_run(judge_dir, include_output_text=True)
    rows = run.final_scan.select(
        pl.col("request_id"), pl.col("status").cast(pl.String), pl.col("output_text").cast(pl.String)
    ).collect()
    pattern = f"(?i){pass_pattern}"
    re.compile(pass_pattern)  # checked by the gates file; a bad one fails here, not in the regex engine
    split = pl.col("request_id").str.split_exact(JUDGE_ID_SEPARATOR, 1)
    return rows.select(
        split.struct.field("field_0").alias("request_id"),
        split.struct.field("field_1").alias("target"),
        pl.when(pl.col("status") == "ok")
        .then(pl.col("output_text").fill_null("").str.contains(pattern))
        .alias("correct"),
        pl.col("output_text").alias("judge_reply"),
    )
