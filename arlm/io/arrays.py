"""Arrays written by arlm: text vectors as NumPy ``.npy`` (one float32 row per text) or Apache Parquet
(a table with the texts, their labels and groups, and each vector as a list column), atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from arlm.io.atomic import atomic_file
from arlm.io.outputs import Kind, _head

NPY = Kind("a NumPy array (.npy)", ".npy", lambda p: _head(p, 6) == b"\x93NUMPY")
PARQUET = Kind("a Parquet table", ".parquet", lambda p: _head(p, 4) == b"PAR1")
SUFFIXES = {".npy": NPY, ".parquet": PARQUET}


def write_vectors(path: str | Path, vectors: np.ndarray, columns: dict[str, list[Any]]) -> None:
    """``vectors`` (N, C) to ``path``: .npy holds only them; .parquet adds ``columns`` (each N long)
    and the vectors as an ``embedding`` column of float32 lists."""
    with atomic_file(path) as tmp:
        if Path(path).suffix.lower() == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, vectors.astype(np.float32))
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).reshape(-1)), vectors.shape[1])
        table = pa.table({**{k: pa.array(v) for k, v in columns.items()}, "embedding": embedding},
                         metadata={b"created_by": b"arlm embed"})
        pq.write_table(table, tmp)
