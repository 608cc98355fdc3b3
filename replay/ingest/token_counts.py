"""Validation of token counts (prompt_tokens, completion_tokens), vectorised over a column.

A token count is valid when it is an integer in 0 .. 2**31 - 1:
- integer columns (Parquet, JSON): the value itself;
- floating-point columns: values with an integral value (374.0), as pandas writes integer columns
  that have gaps;
- text (CSV, JSON strings): optional ASCII whitespace, an optional `-`, ASCII digits, and an
  optional fraction of zeros (`374`, ` 0012 `, `374.0`: the same integral floats written out);
  anything else (`3.5`, `1e3`, `+4`, `abc`) is not an integer.
Rejected values are flagged `non_integer_token_count`, `negative_token_count` or
`token_count_out_of_range`. An empty value (null, or text that is empty or all whitespace) is
absent: `missing_value` when the field is required, else null.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shadowreplay.replay.ingest.casting import cast_locating_failures
from shadowreplay.replay.ingest.problems import RowProblems

INT32_MAX = 2**31 - 1
_INTEGER_TEXT = r"^-?[0-9]+(\.0+)?$"
_ZERO_FRACTION = r"\.0+$"
# Typed scalars for the comparisons: a bare Python number makes Arrow infer its type, which tries to
# import dateutil each time (about 1 ms per call where it is not installed).
_ZERO = pa.scalar(0, pa.int64())
_INT32_MAX = pa.scalar(INT32_MAX, pa.int64())
_NULL = pa.scalar(None, pa.int64())


def token_counts(values: pa.Array, field: str, problems: RowProblems, *, required: bool) -> pa.Array:
    """The valid token counts of `values` as int32 (null where missing or invalid); flags the rest."""
    kind = values.type
    blank: pa.Array | None = None  # text that is empty or all whitespace: absent, as a null is
    if pa.types.is_null(kind):
        integers = pa.nulls(len(values), pa.int64())
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        integers, blank = _integers_from_text(values, field, problems)
    elif pa.types.is_integer(kind):
        integers = _integers_from_integers(values, field, problems)
    elif pa.types.is_floating(kind):
        integers = _integers_from_floats(values, field, problems)
    else:
        problems.flag(
            values.is_valid(),
            field,
            "non_integer_token_count",
            lambda i: f"{field}={values[i].as_py()!r} is not a number",
        )
        integers = pa.nulls(len(values), pa.int64())

    negative = pc.less(integers, _ZERO)
    too_large = pc.greater(integers, _INT32_MAX)
    problems.flag(negative, field, "negative_token_count", lambda i: f"{field}={integers[i].as_py()} is negative")
    problems.flag(
        too_large, field, "token_count_out_of_range", lambda i: f"{field}={integers[i].as_py()} exceeds {INT32_MAX}"
    )
    if required:
        missing = values.is_null() if blank is None else pc.or_(values.is_null(), blank)
        problems.flag(missing, field, "missing_value", f"{field} is empty")
    if values.null_count == len(values) or (not _any(negative) and not _any(too_large)):
        return pc.cast(integers, pa.int32())
    valid = pc.invert(pc.or_(negative, too_large))
    return pc.cast(pc.if_else(valid, integers, _NULL), pa.int32())


def _any(mask: pa.Array) -> bool:
    return bool(pc.any(mask).as_py())


def _integers_from_text(values: pa.Array, field: str, problems: RowProblems) -> tuple[pa.Array, pa.Array | None]:
    """The integers the text holds (null where none), and which values are blank (None: none is)."""
    values = pc.cast(values, pa.string())
    try:
        return pc.cast(values, pa.int64()), None
    except (pa.ArrowInvalid, OverflowError):
        pass
    trimmed = pc.ascii_trim_whitespace(values)
    blank = pc.fill_null(pc.equal(trimmed, ""), False)
    well_formed = pc.match_substring_regex(trimmed, _INTEGER_TEXT)
    malformed = pc.and_(pc.and_(values.is_valid(), pc.invert(blank)), pc.invert(well_formed))
    problems.flag(
        malformed, field, "non_integer_token_count", lambda i: f"{field}={values[i].as_py()!r} is not an integer"
    )
    digits = pc.replace_substring_regex(pc.if_else(well_formed, trimmed, None), _ZERO_FRACTION, "")
    integers, overflowed = cast_locating_failures(digits, pa.int64())
    problems.flag_rows(
        overflowed, field, "token_count_out_of_range", lambda i: f"{field}={values[i].as_py()!r} exceeds {INT32_MAX}"
    )
    return integers, blank


def _integers_from_integers(values: pa.Array, field: str, problems: RowProblems) -> pa.Array:
    if pa.types.is_uint64(values.type):
        huge = pc.greater(values, INT32_MAX)
        problems.flag(
            huge, field, "token_count_out_of_range", lambda i: f"{field}={values[i].as_py()} exceeds {INT32_MAX}"
        )
        values = pc.if_else(huge, None, values)
    return pc.cast(values, pa.int64())


def _integers_from_floats(values: pa.Array, field: str, problems: RowProblems) -> pa.Array:
    floats = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)
    present = values.is_valid().to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        integral = np.isfinite(floats) & (np.floor(floats) == floats)
    problems.flag(
        present & ~integral,
        field,
        "non_integer_token_count",
        lambda i: f"{field}={values[i].as_py()!r} is not an integer",
    )
    in_int64 = integral & (np.abs(floats) < 2.0**62)
    problems.flag(
        present & integral & ~in_int64,
        field,
        "token_count_out_of_range",
        lambda i: f"{field}={values[i].as_py()!r} exceeds {INT32_MAX}",
    )
    keep = present & in_int64
    integers = np.where(keep, floats, 0).astype(np.int64)
    return pa.array(integers, mask=~keep)
