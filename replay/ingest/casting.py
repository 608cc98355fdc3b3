"""Casting a whole Arrow column at once while still finding the few values that fail.

Arrow's cast is all-or-nothing: one bad value fails the whole column. `cast_locating_failures`
keeps the fast path (one cast) for clean columns and, only when that fails, bisects the column so
that clean halves are still cast in bulk; the values that fail on their own come back as nulls,
with their positions.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Below this length a failing slice is cast value by value rather than split further.
_ELEMENTWISE_BELOW = 16


def cast_locating_failures(values: pa.Array, target: pa.DataType, *, safe: bool = True) -> tuple[pa.Array, np.ndarray]:
    """Cast `values` to `target`. Returns the cast array (null where a value failed) and the sorted
    positions of the values that failed. Null inputs are null outputs, never failures."""
    pieces: list[pa.Array] = []
    failures: list[int] = []
    _cast_into(values, target, safe, 0, pieces, failures)
    result = pa.concat_arrays(pieces) if pieces else pa.array([], type=target)
    return result, np.asarray(failures, dtype=np.int64)


def _try_cast(values: pa.Array, target: pa.DataType, safe: bool) -> pa.Array | None:
    try:
        return pc.cast(values, target, safe=safe)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OverflowError):
        return None


def _cast_into(
    values: pa.Array, target: pa.DataType, safe: bool, offset: int, pieces: list[pa.Array], failures: list[int]
) -> None:
    cast = _try_cast(values, target, safe)
    if cast is not None:
        pieces.append(cast)
        return
    if len(values) <= _ELEMENTWISE_BELOW:
        for index in range(len(values)):
            one = _try_cast(values.slice(index, 1), target, safe)
            if one is None:
                failures.append(offset + index)
                pieces.append(pa.nulls(1, target))
            else:
                pieces.append(one)
        return
    half = len(values) // 2
    _cast_into(values.slice(0, half), target, safe, offset, pieces, failures)
    _cast_into(values.slice(half), target, safe, offset + half, pieces, failures)
