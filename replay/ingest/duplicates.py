"""Finding repeated request ids across a whole source, in source order.

The first kept row with an id keeps it; later rows with the same id are duplicates. Only sources
that carry their own ids need this (generated ids are row numbers, unique by construction). The
ids seen are held in a Python set: about 100 bytes an id, so 10 million ids take about 1 GB.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


class DuplicateIds:
    def __init__(self) -> None:
        self._seen: set[str] = set()

    def mark(self, ids: pa.Array, candidates: np.ndarray) -> np.ndarray:
        """Positions (among `candidates`, the rows still good) whose id was seen before, in an
        earlier batch or earlier in this one; the others are remembered."""
        seen = self._seen
        duplicates: list[int] = []
        for position, request_id in zip(candidates.tolist(), ids.take(pa.array(candidates)).to_pylist()):
            if request_id in seen:
                duplicates.append(position)
            else:
                seen.add(request_id)
        return np.asarray(duplicates, dtype=np.int64)
