"""Feature matrices as Parquet blocks in the lake, read back by picklable readers.

The sharded pHDBSCAN fit (operators/hdbscan/sharded.py:fit_sharded_blocks) takes zero-argument
callables that each return one shard's float32 rows; operators never touch storage, so the
readers live here. A block is one Parquet file with a `features` column (fixed-size list of
float32, one entry per row), in row order; block files sort in row order by name.

    readers = write_feature_blocks(lake, "runs/<run>/staging/features", features, blocks=4)
    result, report = fit_sharded_blocks(readers, params)      # labels in the readers' row order

A block per shard keeps each actor's read to one file; per-block writers (Ray Data tasks) call
`write_feature_block` for their own slice and hand the returned reader on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa

from lakelens.infra.storage import Lake

COLUMN = "features"
BLOCK_NAME = "block-{:05d}.parquet"


@dataclass(frozen=True)
class FeatureBlockReader:
    """Reads one block's rows as a C-contiguous float32 (rows, dim) array. Picklable: a Lake pickles
    without its filesystem handle and rebuilds it wherever the reader runs (a Ray actor)."""

    lake: Lake
    path: str  # relative to the lake root
    rows: int
    dim: int

    def __call__(self) -> np.ndarray:
        column = self.lake.read_table(self.path, columns=[COLUMN]).column(COLUMN).combine_chunks()
        values = column.values.to_numpy(zero_copy_only=False)
        return np.ascontiguousarray(values.reshape(-1, self.dim), dtype=np.float32)


def write_feature_block(lake: Lake, folder: str, block: int, features: np.ndarray) -> FeatureBlockReader:
    """Write one block (rows of float32 features) as `folder/block-NNNNN.parquet`; its reader."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"a feature block is a 2-d array (rows, dim), got shape {features.shape}")
    rows, dim = features.shape
    column = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1), type=pa.float32()), dim)
    path = f"{folder.strip('/')}/{BLOCK_NAME.format(block)}"
    lake.write_table(path, pa.table({COLUMN: column}), compression="zstd")
    return FeatureBlockReader(lake, path, rows, dim)


def write_feature_blocks(lake: Lake, folder: str, features: np.ndarray, blocks: int | None = None,
                         rows_per_block: int | None = None) -> list[FeatureBlockReader]:
    """Write a features matrix as `blocks` near-equal Parquet blocks (or blocks of `rows_per_block`
    rows) under `folder`, replacing what was there; the readers, in row order."""
    n = features.shape[0]
    if (blocks is None) == (rows_per_block is None):
        raise ValueError("give exactly one of blocks and rows_per_block")
    if blocks is not None:
        if blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {blocks}")
        bounds = np.linspace(0, n, blocks + 1).astype(np.int64)
    else:
        bounds = np.unique(np.r_[np.arange(0, n, max(1, rows_per_block)), n]).astype(np.int64)
    lake.delete_dir(folder)
    return [write_feature_block(lake, folder, i, features[lo:hi])
            for i, (lo, hi) in enumerate(zip(bounds, bounds[1:]))]


def feature_block_readers(lake: Lake, folder: str) -> list[FeatureBlockReader]:
    """Readers for the blocks already under `folder` (written by `write_feature_block[s]`), in row order."""
    readers = []
    for entry in lake.list_files(folder, suffix=".parquet"):
        meta = lake.parquet_metadata(entry.path)
        field = meta.schema.to_arrow_schema().field(COLUMN)
        readers.append(FeatureBlockReader(lake, entry.path, meta.num_rows, field.type.list_size))
    return readers


def block_sizes(readers: Iterable[FeatureBlockReader]) -> list[int]:
    """Rows per block, known without reading the blocks (they come from the writer or the footer)."""
    return [r.rows for r in readers]
