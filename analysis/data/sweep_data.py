"""Reading a sweep directory (SWEEP_DIR of `shadowreplay sweep`): its summary.json and curve.parquet,
a curve of an earlier version completed to the current one."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from shadowreplay.analysis.summary.models import SweepSummary
from shadowreplay.replay.schemas.run_dir import SweepDir

CURVE_V2_COLUMNS: dict[str, pl.DataType | type[pl.DataType]] = {
    "sent_rps": pl.Float64,
    "kept_rps": pl.Float64,
    "saturation": pl.String,
    "repeat_of": pl.Int32,
    "outlier": pl.Boolean,
}
"""The columns curve version 2 added, filled in (null, or False for `outlier`) for older curves."""


def complete_curve(curve: pl.DataFrame) -> pl.DataFrame:
    """`curve` with every column of the current curve version (a version-1 curve gains empty ones)."""
    missing = [
        (pl.lit(False) if name == "outlier" else pl.lit(None)).cast(dtype).alias(name)
        for name, dtype in CURVE_V2_COLUMNS.items()
        if name not in curve.columns
    ]
    return curve.with_columns(missing) if missing else curve


def read_sweep(sweep_dir: str | Path) -> tuple[SweepSummary, pl.DataFrame]:
    """SWEEP_DIR/summary.json and SWEEP_DIR/curve.parquet (completed to the current curve version)."""
    sweep = SweepDir(sweep_dir)
    summary = SweepSummary.model_validate(json.loads(sweep.summary_path.read_text(encoding="utf-8")))
    return summary, complete_curve(pl.read_parquet(sweep.curve_path))
