"""Array helpers shared by the Beam transforms and the pure modules (no Beam import)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def to_numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A column as numpy (strings and nullable columns become object arrays)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column.to_numpy(zero_copy_only=False)
