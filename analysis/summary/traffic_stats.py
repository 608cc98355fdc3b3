"""The statistics of a traffic log behind `shadowreplay inspect`, computed lazily with polars.

Definitions
- span: last arrival - first arrival (s); rate: rows / span.
- peak-to-average at w seconds: the largest count of requests in windows of w seconds aligned at
  the first arrival, divided by rows * w / span; null (n/a) when w is longer than the span, where
  no whole window fits and the ratio would only restate span / w.
- percentiles: linear interpolation (as analysis/metrics/table.py), of the non-null counts.
- monthly tokens: (prompt + completion tokens) / span x 30 days (a 30-day month).
- prefix reuse, requests: the share of all requests with at least one prefix block id seen in an
  earlier request (arrival order). One shared block (a common system prompt) is enough, so this
  reads near 100% on a trace where every request starts with the same block.
- prefix reuse, blocks: over the block lists of all requests, the share of block ids that appeared
  in an earlier request (arrival order; a repeat inside one request's own list does not count):
  how much of the prompt blocks a prefix cache could serve, at best, with unlimited capacity.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from shadowreplay.replay.schemas.traffic_log import COLUMNS, open_traffic_log

SECONDS_PER_MONTH = 30 * 24 * 3600
PERCENTILES = (50, 90, 99)


def _distribution(frame: pl.LazyFrame, column: str) -> dict:
    values = pl.col(column).drop_nulls().cast(pl.Float64)
    exprs = [values.quantile(p / 100, interpolation="linear").alias(f"p{p}") for p in PERCENTILES]
    row = (
        frame.select(*exprs, values.max().alias("max"), values.sum().alias("total"), values.count().alias("count"))
        .collect()
        .row(0, named=True)
    )
    return row


def peak_to_average(frame: pl.LazyFrame, rows: int, span_s: float, window_s: float) -> float | None:
    """Largest count in w-second windows aligned at the first arrival / (rows * w / span); None
    for fewer than two rows, no span, or a window longer than the span."""
    if rows < 2 or span_s <= 0 or window_s > span_s:
        return None
    offset = (pl.col("arrival_time") - pl.col("arrival_time").min()).dt.total_microseconds() / 1e6
    peak = (
        frame.select((offset // window_s).alias("window"))
        .group_by("window")
        .len()
        .select(pl.col("len").max())
        .collect()
        .item()
    )
    return peak / (rows * window_s / span_s)


def prefix_reuse(frame: pl.LazyFrame, rows: int) -> dict[str, float | int | None]:
    """Prefix reuse in arrival order (definitions in the module docstring): `requests_share` (requests
    with a block id seen in an earlier request / all requests) and `blocks_share` (block ids, over
    all requests' lists, that appeared in an earlier request / all block ids), with their counts;
    the shares are None when no request has a block id."""
    blocks = (
        frame.with_row_index("position")
        .select("position", "prefix_block_ids")
        .drop_nulls("prefix_block_ids")
        .explode("prefix_block_ids")
        .drop_nulls("prefix_block_ids")
    )
    first_use = blocks.group_by("prefix_block_ids").agg(pl.col("position").min().alias("first"))
    reused = pl.col("position") > pl.col("first")
    counts = (
        blocks.join(first_use, on="prefix_block_ids")
        .select(
            pl.len().alias("blocks"),
            reused.sum().alias("blocks_reused"),
            pl.col("position").filter(reused).n_unique().alias("requests_reusing"),
        )
        .collect()
        .row(0, named=True)
    )
    total, reused_blocks, reusing = counts["blocks"], counts["blocks_reused"] or 0, counts["requests_reusing"]
    return {
        "requests_share": reusing / rows if total and rows else None,
        "requests_reusing": reusing,
        "requests": rows,
        "blocks_share": reused_blocks / total if total else None,
        "blocks_reused": reused_blocks,
        "blocks": total,
    }


def _stats(frame: pl.LazyFrame) -> dict:
    head = (
        frame.select(
            pl.len().alias("rows"),
            pl.col("arrival_time").min().alias("first"),
            pl.col("arrival_time").max().alias("last"),
        )
        .collect()
        .row(0, named=True)
    )
    rows = head["rows"]
    span_s = (head["last"] - head["first"]).total_seconds() if rows else 0.0
    prompt = _distribution(frame, "prompt_tokens")
    completion = _distribution(frame, "completion_tokens")
    tokens = (prompt["total"] or 0) + (completion["total"] or 0)
    reuse = prefix_reuse(frame, rows)
    return {
        "rows": rows,
        "first_arrival": head["first"].isoformat() if head["first"] else None,
        "last_arrival": head["last"].isoformat() if head["last"] else None,
        "span_s": span_s,
        "rate_rps": rows / span_s if span_s > 0 else None,
        "peak_to_average_1s": peak_to_average(frame, rows, span_s, 1.0),
        "peak_to_average_60s": peak_to_average(frame, rows, span_s, 60.0),
        "prompt_tokens": {k: prompt[k] for k in ("p50", "p90", "p99", "max", "total", "count")},
        "completion_tokens": {k: completion[k] for k in ("p50", "p90", "p99", "max", "total", "count")},
        "tokens_per_s": tokens / span_s if span_s > 0 else None,
        "monthly_tokens": tokens / span_s * SECONDS_PER_MONTH if span_s > 0 else None,
        "prefix_reuse_share": reuse["requests_share"],
        "prefix_block_reuse_share": reuse["blocks_share"],
        "prefix_reuse": reuse,
    }


def traffic_stats(path: str | Path) -> dict:
    """Statistics of the traffic log at `path` (checked for its schema first), with a per-tag
    breakdown when any row has a tag."""
    log = open_traffic_log(path)  # raises TrafficLogError for a file that is not a traffic log
    # A capture's directory: its shards in name order, the contract's columns of each (ties: file order)
    shards = [pl.scan_parquet(shard).select(COLUMNS) for shard in log.paths]
    frame = pl.concat(shards).sort("arrival_time", maintain_order=True)
    stats = _stats(frame)
    stats["definitions"] = __doc__.split("Definitions\n", 1)[1].strip()
    tags = frame.select(pl.col("tag").drop_nulls().unique()).collect().to_series().sort().to_list()
    stats["tags"] = {tag: _stats(frame.filter(pl.col("tag") == tag)) for tag in tags}
    return stats
