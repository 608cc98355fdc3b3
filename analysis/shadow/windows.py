"""The figures of a shadow's summary, grouped: per reporting window (the replay's timeline), per tag, and per
hour of the day (the log's arrival time: the diurnal view), for each side. Computed from the paired
measures (analysis/shadow/paired_requests.py) and written as DIR/windows.parquet, so every figure
summary.md shows is a row there.

Per group and side (`role` baseline, candidate or aa, and its `target`): `requests`, `error_rate`,
`ttft_p50_ms`, `ttft_p95_ms`, `ttft_p99_ms`, `tpot_p50_ms`, `tpot_p95_ms`, `e2e_p50_ms`, `e2e_p95_ms`,
`e2e_p99_ms` (metrics.table percentiles, over the side's ok requests), `refusal_rate`, and with a
scorer `accuracy` over the requests with a reference, with its 95% Wilson interval (`accuracy_low`,
`accuracy_high`): for k right of n, p = k/n, z = 1.96,
centre = (p + z^2/2n) / (1 + z^2/n), half-width = z sqrt(p(1 - p)/n + z^2/4n^2) / (1 + z^2/n).
"""

from __future__ import annotations

import polars as pl

from shadowreplay.analysis.metrics.table import percentile
from shadowreplay.analysis.shadow.paired_requests import Sides

WILSON_Z = 1.96
GROUPINGS = ("window", "tag", "hour_of_day")
ROLES = {"b": "baseline", "c": "candidate", "a": "aa"}
LATENCY_FIGURES = (("ttft", (50, 95, 99)), ("tpot", (50, 95)), ("e2e", (50, 95, 99)))


def wilson(correct: pl.Expr, n: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """The 95% Wilson interval (low, high) of k = `correct` right of `n` (module docstring)."""
    z2 = WILSON_Z**2
    p = correct / n
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = WILSON_Z * ((p * (1 - p) / n + z2 / (4 * n * n)).sqrt()) / (1 + z2 / n)
    return (centre - half).clip(0.0, 1.0), (centre + half).clip(0.0, 1.0)


def _side_aggregations(prefix: str, accuracy: bool) -> list[pl.Expr]:
    figures = [
        pl.len().alias("requests"),
        pl.col(f"{prefix}_error").cast(pl.Float64).mean().alias("error_rate"),
        pl.col(f"{prefix}_refusal").cast(pl.Float64).mean().alias("refusal_rate"),
    ]
    for quantity, ps in LATENCY_FIGURES:
        figures += [percentile(pl.col(f"{prefix}_{quantity}_ms"), p).alias(f"{quantity}_p{p}_ms") for p in ps]
    if accuracy:
        scored = pl.col(f"{prefix}_correct_0")
        figures += [
            scored.count().alias("scored"),
            scored.cast(pl.Float64).sum().alias("correct"),
        ]
    return figures


def grouped_figures(pairs: pl.DataFrame, sides: Sides, window_s: float, accuracy: bool) -> pl.DataFrame:
    """The figures (module docstring) for every grouping, side and group, long: `grouping` (window, tag or
    hour_of_day), `group` (its label: window index, tag, hour), `start_s` and `end_s` (windows: on the replay's
    timeline; arrival_start_s and arrival_end_s the log's times they hold), `role`, `target`, the figures."""
    keyed = pairs.with_columns(
        (pl.col("scheduled_s") / window_s).floor().cast(pl.Int64).cast(pl.String).alias("window"),
        pl.col("tag").fill_null("(untagged)").alias("tag"),
        pl.col("arrival_time").dt.hour().cast(pl.String).alias("hour_of_day"),
    )
    frames = []
    for grouping in GROUPINGS:
        if grouping == "hour_of_day" and keyed.get_column("arrival_time").null_count() == keyed.height:
            continue
        for prefix, target in sides.named.items():
            frame = keyed.group_by(grouping).agg(
                *_side_aggregations(prefix, accuracy),
                (pl.col("scheduled_s").min()).alias("start_s"),
                (pl.col("scheduled_s").max()).alias("end_s"),
                pl.col("arrival_s").min().alias("arrival_start_s"),
                pl.col("arrival_s").max().alias("arrival_end_s"),
            )
            frames.append(
                frame.rename({grouping: "group"}).with_columns(
                    pl.lit(grouping).alias("grouping"),
                    pl.lit(ROLES[prefix]).alias("role"),
                    pl.lit(target).alias("target"),
                )
            )
    figures = pl.concat(frames, how="diagonal_relaxed")
    if accuracy:
        low, high = wilson(pl.col("correct"), pl.col("scored").cast(pl.Float64))
        figures = figures.with_columns(
            pl.when(pl.col("scored") > 0).then(pl.col("correct") / pl.col("scored")).alias("accuracy"),
            pl.when(pl.col("scored") > 0).then(low).alias("accuracy_low"),
            pl.when(pl.col("scored") > 0).then(high).alias("accuracy_high"),
        )
    order = (
        pl.when(pl.col("grouping") == "tag")
        .then(pl.lit(None, dtype=pl.Int64))
        .otherwise(pl.col("group").cast(pl.Int64, strict=False))
    )
    first = ["grouping", "group", "role", "target", "requests"]
    return (
        figures.with_columns(order.alias("_order"))
        .sort("grouping", "_order", "group", "role")
        .drop("_order")
        .select(*first, pl.exclude(first))
    )
