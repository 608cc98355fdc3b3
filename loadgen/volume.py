"""Traffic volume: more or less of a log's traffic on the log's own timeline (`replay --volume`).

`--speed` compresses time: twice the rate, but every burst twice as short and the run half as long.
A volume keeps the timeline (a burst at minute 3 is still at minute 3, as long) and changes how many
requests arrive, the way a product with twice the users would see it:

- a volume (analysis/capacity/traffic_volume.py TrafficVolume: `2x`, `120rps`, `300M-tokens/month`)
  becomes a factor of the selected rows' own volume (`log_volume` gives their totals).
- `on_timeline(rows, offsets, factor)`: below 1, **thinning**: a conversation (the rows of one
  `session_id`, else one request) is kept when a hash of its id, in [0, 1), is below the factor, so
  whole conversations stay or go and a lower volume's requests are a subset of a higher one's. Above
  1, **superposition**: floor(factor) copies of every request, then a thinned copy for the rest,
  with `~k` after copy k's request and session ids. Each conversation of a copy (or request without
  one) arrives later than the log's by its own shift, uniform in [0, spread) from a hash of its id and
  the copy: spread = SPREAD_GAPS mean gaps of the log, at most MAX_SPREAD_S. So copies behave as
  other users would: apart at the scale of a few gaps (one shift for all copies would send each
  request as a train of copies, a burst the log never had), together at the scale of the log's own
  bursts (no request moves by more than the shortest demand window, analysis/capacity/demand.py),
  and a conversation's turns keep their order and spacing.
- Copies of a synthesized prompt share its prefix blocks, as the log's requests do, and differ in
  the rest (replay/requests/prompt_synthesis.py seeds it by request id); a row with recorded text is
  sent again as recorded, so a server's prefix cache serves copies of it cheaply (`VolumeScaling`
  counts such rows).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from shadowreplay.analysis.capacity.traffic_volume import LogVolume, TrafficVolume
from shadowreplay.errors import UserError
from shadowreplay.replay.schemas.traffic_log import open_traffic_log

THINNING_SEED = 0x5EED  # the hash seed of thinning: fixed, so a volume keeps the same requests every run
SHIFT_SEED = 0x5111F7  # the hash seed of the copies' shifts
SPREAD_GAPS = 10.0  # a copy's shifts spread over this many of the log's mean gaps ...
MAX_SPREAD_S = 1.0  # ... and never more than this (the shortest demand window)


def log_volume(rows: pa.Table, offsets_s: np.ndarray) -> LogVolume:
    """The selected rows' totals, for TrafficVolume.factor."""
    span = float(offsets_s.max() - offsets_s.min()) if len(offsets_s) else 0.0
    return LogVolume(
        requests=rows.num_rows,
        span_s=span,
        prompt_tokens=int(pc.sum(rows.column("prompt_tokens")).as_py() or 0),
        completion_tokens=int(pc.sum(rows.column("completion_tokens")).as_py() or 0),
    )


@dataclass(frozen=True)
class VolumeScaling:
    """What `on_timeline` did, for the manifest: the factor, how (`thinned`, `superposed` or `as
    logged`), full copies, the spread of the copies' shifts, and the requests before and after."""

    spec: str
    factor: float
    method: Literal["as logged", "thinned", "superposed"]
    copies: int
    copy_spread_s: float
    log_requests: int
    requests: int
    repeated_text_rows: int  # rows with recorded text sent more than once (a prefix cache serves them cheaply)

    def describe(self) -> str:
        if self.method == "as logged":
            return f"volume {self.spec}: as logged"
        if self.method == "thinned":
            return f"volume {self.spec}: thinned to {self.requests:,} of {self.log_requests:,} requests"
        rest = self.factor - self.copies
        thinned = f" and a copy thinned to {rest:.3g}x" if rest > 1e-12 else ""
        return (
            f"volume {self.spec}: {self.copies} copies superposed (each within {self.copy_spread_s:.3g} s of the "
            "log's time)"
            f"{thinned}: {self.requests:,} requests from {self.log_requests:,}"
        )


def _unit_hash(rows: pa.Table, salt: int, seed: int = THINNING_SEED) -> np.ndarray:
    """Per row, a uniform [0, 1) value of its conversation (session_id, else request_id) and `salt`."""
    frame = pl.from_arrow(rows.select(["session_id", "request_id"]))
    assert isinstance(frame, pl.DataFrame)
    unit = frame.select(pl.coalesce("session_id", "request_id").hash(seed=seed + salt))
    return unit.to_series().to_numpy().astype(np.float64) / 2.0**64


def _copy(rows: pa.Table, offsets_s: np.ndarray, k: int, spread_s: float) -> tuple[pa.Table, np.ndarray]:
    """Copy k of the rows: ids with `~k`, each conversation later by its own shift in [0, spread_s)."""
    if k == 0:
        return rows, offsets_s
    shifts = _unit_hash(rows, salt=k, seed=SHIFT_SEED) * spread_s  # of the log's ids: one per conversation
    for name in ("request_id", "session_id"):  # a null session stays null
        renamed = pc.binary_join_element_wise(rows.column(name), f"~{k}", "")
        rows = rows.set_column(rows.schema.get_field_index(name), rows.schema.field(name), renamed)
    return rows, offsets_s + shifts


def on_timeline(
    rows: pa.Table, offsets_s: np.ndarray, factor: float, spec: str = ""
) -> tuple[pa.Table, np.ndarray, VolumeScaling]:
    """The rows (and their arrival offsets, s) at `factor` times their volume on their own timeline
    (module docstring), sorted by arrival, with what was done."""
    if factor <= 0:
        raise UserError(f"--volume {spec}: the factor must be positive, got {factor}")
    spec = spec or f"{factor:g}x"
    n = rows.num_rows
    copies = math.floor(factor)
    rest = factor - copies
    span = float(offsets_s.max() - offsets_s.min()) if n else 0.0
    mean_gap = span / (n - 1) if n > 1 else 0.0
    spread = min(SPREAD_GAPS * mean_gap, MAX_SPREAD_S) if factor > 1 else 0.0
    parts = [_copy(rows, offsets_s, k, spread) for k in range(copies)]
    kept = np.zeros(n, dtype=bool)
    if rest > 1e-12:
        kept = _unit_hash(rows, salt=copies) < rest
        thinned, thinned_offsets = _copy(rows.filter(pa.array(kept)), offsets_s[kept], copies, spread)
        parts.append((thinned, thinned_offsets))
    if not parts or sum(part.num_rows for part, _ in parts) == 0:
        raise UserError(f"--volume {spec}: thinning to {factor:.3g}x of {n} requests leaves none")
    scaled = pa.concat_tables([part for part, _ in parts])
    scaled_offsets = np.concatenate([times for _, times in parts])
    order = np.argsort(scaled_offsets, kind="stable")
    scaled, scaled_offsets = scaled.take(pa.array(order)), scaled_offsets[order]
    method: Literal["as logged", "thinned", "superposed"] = (
        "as logged" if factor == 1 else "thinned" if factor < 1 else "superposed"
    )
    if {"messages", "prompt"} <= set(rows.column_names):
        recorded_text = pc.or_(pc.is_valid(rows.column("messages")), pc.is_valid(rows.column("prompt"))).to_numpy(
            zero_copy_only=False
        )
    else:  # the arrivals alone (arrivals_at_volume): no text to send twice
        recorded_text = np.zeros(n, dtype=bool)
    sent_again = int((recorded_text & (kept if copies == 1 else copies > 1)).sum()) if copies else 0
    scaling = VolumeScaling(spec, factor, method, copies, spread, n, scaled.num_rows, sent_again)
    return scaled, scaled_offsets, scaling


VolumeHook = Callable[[pa.Table, np.ndarray], tuple[pa.Table, np.ndarray, dict[str, Any]]]


def volume_hook(volume: TrafficVolume, say: Callable[[str], None] = print) -> VolumeHook:
    """ReplayRequest.volume for `volume`: the selected rows at it on their own timeline (the factor from
    their own totals), saying what was done and warning where recorded text is sent more than once."""

    def at_volume(rows: pa.Table, offsets: np.ndarray) -> tuple[pa.Table, np.ndarray, dict[str, Any]]:
        scaled, scaled_offsets, scaling = on_timeline(
            rows, offsets, volume.factor(log_volume(rows, offsets)), volume.spec
        )
        say(f"replay: {scaling.describe()}")
        if scaling.repeated_text_rows:
            say(
                f"replay: WARNING {scaling.repeated_text_rows:,} rows with recorded text are sent more than once "
                "(a server's prefix cache serves the copies cheaply)"
            )
        return scaled, scaled_offsets, asdict(scaling)

    return at_volume


def arrivals_at_volume(log: str | Path, factor: float) -> np.ndarray:
    """The traffic log's arrivals (s from its first, sorted) at `factor` times its volume, as `replay
    --volume` would send them (the same thinning and copies): what the capacity plan's fleet simulation
    is fed. Reads three columns of the log."""
    pf = open_traffic_log(log)
    columns = ["arrival_time"] if factor == 1 else ["arrival_time", "request_id", "session_id"]
    rows = pf.read(columns=columns)  # the ids only where they pick or shift conversations
    micros = rows.column("arrival_time").cast(pa.timestamp("us")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    offsets = (micros - micros.min()) / 1e6 if len(micros) else np.zeros(0)
    if factor == 1:
        return np.sort(offsets)
    _, scaled, _ = on_timeline(rows.drop_columns(["arrival_time"]), offsets, factor)
    return scaled
