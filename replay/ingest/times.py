"""Parsing arrival times into timestamp[us, UTC], vectorised over a column.

Accepted forms:
- ISO 8601 text: a date, optionally a time separated by `T` or a space, optional fraction (up to
  nanoseconds; digits below the microsecond are dropped), optional `Z` or `+HH:MM` offset. Text
  without an offset is taken as UTC (the Azure traces are UTC wall clock).
- Numbers (JSON numbers, numeric columns, numeric text): with an `origin`, an offset from it in
  `relative_unit` (Mooncake: milliseconds); without one, seconds since the Unix epoch, or
  milliseconds when the magnitude is 1e11 or more (1e11 s is the year 5138, 1e11 ms is 1973).
- Timestamp columns (Parquet): naive ones are taken as UTC; dates are midnight UTC.
Anything else is flagged `invalid_time` (and an empty value `missing_value`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shadowreplay.replay.ingest.casting import cast_locating_failures
from shadowreplay.replay.ingest.errors import IngestError
from shadowreplay.replay.ingest.problems import RowProblems

ARRIVAL_TYPE = pa.timestamp("us", tz="UTC")
EPOCH_MS_FROM = 1e11
_US_PER = {"s": 1_000_000.0, "ms": 1_000.0}
_US_LIMIT = 2.0**62
_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_TIME = r"[T ][0-9]{2}(:?[0-9]{2}(:?[0-9]{2}(\.[0-9]{1,9})?)?)?"
_OFFSET = r"(Z|z|[+-][0-9]{2}(:?[0-9]{2})?)"
_ISO_NAIVE = rf"^{_DATE}({_TIME})?$"
_ISO_WITH_OFFSET = rf"^{_DATE}{_TIME}{_OFFSET}$"
_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"

RelativeUnit = Literal["s", "ms"]


def arrival_times(
    values: pa.Array,
    field: str,
    problems: RowProblems,
    *,
    origin: datetime | None = None,
    relative_unit: RelativeUnit = "s",
) -> pa.Array:
    """The arrival times of `values` as timestamp[us, UTC] (null where missing or invalid)."""
    kind = values.type
    problems.flag(values.is_null(), field, "missing_value", f"{field} is empty")
    if pa.types.is_null(kind):
        return pa.nulls(len(values), ARRIVAL_TYPE)
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return _from_timestamps(values)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        micros, ok = _micros_from_numbers(pc.cast(values, pa.float64()), origin, relative_unit)
        problems.flag(
            values.is_valid().to_numpy(zero_copy_only=False) & ~ok,
            field,
            "invalid_time",
            lambda i: f"{field}={values[i].as_py()!r} is out of range",
        )
        return pa.array(micros, mask=~ok, type=pa.int64()).cast(ARRIVAL_TYPE)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return _from_text(pc.cast(values, pa.string()), field, problems, origin, relative_unit)
    problems.flag(values.is_valid(), field, "invalid_time", lambda i: f"{field}={values[i].as_py()!r} is not a time")
    return pa.nulls(len(values), ARRIVAL_TYPE)


def parse_origin(text: str) -> datetime:
    """An ISO 8601 wall-clock origin (`--start`); without an offset it is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise IngestError(f"--start {text!r} is not an ISO 8601 time (e.g. 2025-01-01T00:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _origin_micros(origin: datetime) -> int:
    delta = origin - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_timestamps(values: pa.Array) -> pa.Array:
    if pa.types.is_date(values.type):
        values = pc.cast(values, pa.timestamp("s"))
    if values.type.tz is None:
        values = pc.cast(values, pa.timestamp(values.type.unit, tz="UTC"))
    return pc.cast(values, ARRIVAL_TYPE, safe=False)


def _micros_from_numbers(
    numbers: pa.Array, origin: datetime | None, relative_unit: RelativeUnit
) -> tuple[np.ndarray, np.ndarray]:
    """Microseconds since the epoch and a validity mask, from float64 numbers (nulls invalid)."""
    floats = numbers.to_numpy(zero_copy_only=False)
    if origin is not None:
        micros = floats * _US_PER[relative_unit] + _origin_micros(origin)
    else:
        with np.errstate(invalid="ignore"):
            scale = np.where(np.abs(floats) >= EPOCH_MS_FROM, _US_PER["ms"], _US_PER["s"])
        micros = floats * scale
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(micros) & (np.abs(micros) < _US_LIMIT)
    return np.where(ok, np.round(np.where(ok, micros, 0.0)), 0).astype(np.int64), ok


def _from_text(
    values: pa.Array, field: str, problems: RowProblems, origin: datetime | None, relative_unit: RelativeUnit
) -> pa.Array:
    try:
        naive = pc.cast(values, pa.timestamp("ns"))
        return pc.cast(pc.cast(naive, pa.timestamp("ns", tz="UTC")), ARRIVAL_TYPE, safe=False)
    except (pa.ArrowInvalid, OverflowError):
        pass
    text = pc.ascii_trim_whitespace(values)
    micros = np.zeros(len(values), dtype=np.int64)
    parsed = np.zeros(len(values), dtype=bool)
    for pattern, target in ((_ISO_NAIVE, pa.timestamp("ns")), (_ISO_WITH_OFFSET, pa.timestamp("ns", tz="UTC"))):
        rows = np.flatnonzero(pc.match_substring_regex(text, pattern).fill_null(False).to_numpy(zero_copy_only=False))
        if rows.size:
            cast, failed = cast_locating_failures(text.take(rows), target)
            good = np.ones(rows.size, dtype=bool)
            good[failed] = False
            as_micros = pc.cast(cast, pa.timestamp("us", tz=target.tz), safe=False).cast(pa.int64()).fill_null(0)
            micros[rows[good]] = as_micros.to_numpy(zero_copy_only=False)[good]
            parsed[rows[good]] = True
    numeric_rows = np.flatnonzero(
        pc.match_substring_regex(text, _NUMBER).fill_null(False).to_numpy(zero_copy_only=False)
    )
    if numeric_rows.size:
        numbers = pc.cast(text.take(numeric_rows), pa.float64())
        numeric_micros, ok = _micros_from_numbers(numbers, origin, relative_unit)
        micros[numeric_rows[ok]] = numeric_micros[ok]
        parsed[numeric_rows[ok]] = True
    present = values.is_valid().to_numpy(zero_copy_only=False)
    problems.flag(
        present & ~parsed,
        field,
        "invalid_time",
        lambda i: f"{field}={values[i].as_py()!r} is not an ISO 8601 time or a number",
    )
    return pa.array(micros, mask=~parsed, type=pa.int64()).cast(ARRIVAL_TYPE)
