"""Ray Data reads and writes against the lake, with validation done as data streams in."""

from __future__ import annotations

import hashlib
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lakelens.infra.contracts import (
    SOURCE_FILE,
    SOURCE_ROW,
    TableContract,
    UnreadableInputError,
    quarantine_rows,
    split_duplicates,
)
from lakelens.infra.runs import InputFile, Run


class ValidatingReader:
    """Map function: a one-row batch naming a file in, validated row batches out.

    Broken rows are written to the run's quarantine as the file is read, under a name derived
    from the file and batch so a retried task overwrites its own output.
    """

    def __init__(
        self,
        run: Run,
        contract: TableContract,
        columns: list[str] | None = None,
        keep_users: Any = None,
        ts_range_us: tuple[int, int] | None = None,
    ) -> None:
        self.run = run
        self.contract = contract
        self.columns = columns
        self.keep_users = keep_users  # a pyarrow array, or an ObjectRef to one
        self.ts_range_us = ts_range_us
        # columns outside the contract (expert features) are passed through only when asked for
        self._wants_extra = bool(set(columns or ()) - {c.name for c in contract.columns})

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        keep_users = self.keep_users
        if keep_users is not None and not isinstance(keep_users, pa.Array):
            import ray

            keep_users = ray.get(keep_users)
        lake = self.run.lake
        for rel_path in batch.column("path").to_pylist():
            source = lake.uri(rel_path)
            part = hashlib.sha1(rel_path.encode()).hexdigest()[:16]
            first_row = 0
            try:
                batches = lake.iter_parquet_batches(rel_path)
                for number, raw in enumerate(batches):
                    checked = self.contract.validate(pa.Table.from_batches([raw]), source, first_row,
                                                     keep_extra=self._wants_extra)
                    self.run.write_quarantine(self.contract.name, checked.quarantined, f"{part}-{number:05d}")
                    sources = pa.array([source] * checked.valid.num_rows, pa.string())
                    rows = checked.valid.append_column(SOURCE_FILE, sources).append_column(
                        SOURCE_ROW, pa.array(checked.valid_positions + first_row, pa.int64()))
                    first_row += raw.num_rows
                    rows = self._filter(rows, keep_users)
                    if self.columns:
                        rows = rows.select(self.columns + [SOURCE_FILE, SOURCE_ROW])
                    if rows.num_rows:
                        yield rows
            except (OSError, pa.ArrowException) as exc:
                raise UnreadableInputError(source, exc) from exc

    def _filter(self, rows: pa.Table, keep_users: pa.Array | None) -> pa.Table:
        if self.ts_range_us is not None and rows.num_rows:
            ts = pc.cast(rows.column("ts"), pa.int64())
            lo, hi = self.ts_range_us
            rows = rows.filter(pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)))
        if keep_users is not None and rows.num_rows:
            rows = rows.filter(pc.is_in(rows.column("user_id"), value_set=keep_users))
        return rows


def read_validated(
    run: Run,
    contract: TableContract,
    files: list[InputFile],
    columns: list[str] | None = None,
    keep_users: Any = None,
    ts_range_us: tuple[int, int] | None = None,
):
    """A Ray Dataset of contract-valid rows from `files` (one read task per file)."""
    import ray.data

    paths = [{"path": f.path} for f in files]
    reader = ValidatingReader(run, contract, columns, keep_users, ts_range_us)
    return ray.data.from_items(paths, override_num_blocks=max(1, len(paths))).map_batches(
        reader, batch_size=1, batch_format="pyarrow", zero_copy_batch=True
    )


def stable_bucket(values: pa.Array | pa.ChunkedArray, num_buckets: int) -> np.ndarray:
    """Hash strings to buckets identically in every process (pandas' hash uses a fixed key)."""
    as_numpy = values.to_numpy(zero_copy_only=False) if isinstance(values, pa.Array) else values.to_numpy()
    return (pd.util.hash_array(np.asarray(as_numpy, dtype=object)) % np.uint64(num_buckets)).astype(np.int32)


def keep_first_quarantine_rest(group: pa.Table, run: Run, contract: TableContract) -> pa.Table:
    """map_groups function: keep the first row per key (by source file and row), quarantine the rest."""
    firsts, repeats = split_duplicates(group, contract.key)
    if repeats.num_rows:
        bucket = int(group.column("_bucket")[0].as_py())
        rows = quarantine_rows(
            table=contract.name,
            source_file=repeats.column(SOURCE_FILE).to_pylist(),
            source_rows=repeats.column(SOURCE_ROW).to_numpy(),
            reasons=[f"duplicate:{contract.key}"] * repeats.num_rows,
            records=repeats.drop_columns(["_bucket"]).to_pylist(),
        )
        run.write_quarantine(contract.name, rows, f"duplicates-{bucket:05d}")
    return firsts


def quarantine_duplicates(ds, run: Run, contract: TableContract, num_buckets: int):
    """Global uniqueness of the contract key: shuffle by key hash, keep first occurrences."""
    key = contract.key

    def add_bucket(batch: pa.Table) -> pa.Table:
        return batch.append_column("_bucket", pa.array(stable_bucket(batch.column(key), num_buckets)))

    return (
        ds.map_batches(add_bucket, batch_format="pyarrow", zero_copy_batch=True)
        .groupby("_bucket", num_partitions=num_buckets)
        .map_groups(keep_first_quarantine_rest, batch_format="pyarrow", fn_kwargs={"run": run, "contract": contract})
        .drop_columns(["_bucket"])
    )


def collect_table(batches_source, empty_schema: pa.Schema) -> pa.Table:
    """Every row of a Ray Dataset or dataset shard as one Arrow table (`empty_schema` when there are none).

    For results known to fit in one process: a day's transaction keys, a worker's training share.
    """
    tables = [b for b in batches_source.iter_batches(batch_format="pyarrow", batch_size=None) if b.num_rows]
    return pa.concat_tables(tables) if tables else empty_schema.empty_table()
