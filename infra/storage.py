"""One lake URI for plain paths, file:// and s3://bucket/prefix, served to pyarrow/Ray, DuckDB and boto3 alike."""

from __future__ import annotations

import io
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lakelens.infra.config import StorageConfig


@dataclass(frozen=True)
class FileEntry:
    path: str  # path relative to the lake root, with forward slashes
    size: int
    mtime_ns: int


class Lake:
    """A lake root. All paths handed in and out are relative to the root unless a method says otherwise."""

    def __init__(self, root: str | Path, storage: StorageConfig | None = None) -> None:
        root = str(root)
        parsed = urlparse(root)
        self.storage = (storage or StorageConfig()).resolved()
        if parsed.scheme == "s3":
            if not parsed.netloc:
                raise ValueError(f"lake root {root!r} names no bucket; expected s3://bucket/prefix")
            self.scheme = "s3"
            self.bucket = parsed.netloc
            self._base = f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
        elif parsed.scheme in ("", "file"):
            self.scheme = "file"
            self.bucket = None
            local = parsed.path if parsed.scheme == "file" else root
            self._base = str(Path(local).expanduser().resolve())
        else:
            raise ValueError(f"unsupported lake root {root!r}: use a path, file:// or s3://bucket/prefix")
        self._fs: pafs.FileSystem | None = None

    # pickled into Ray tasks: rebuild the filesystem on the other side
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fs"] = None
        return state

    def __repr__(self) -> str:
        return f"Lake({self.root_uri!r})"

    @property
    def root_uri(self) -> str:
        return f"s3://{self._base}" if self.scheme == "s3" else self._base

    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:
            self._fs = self._make_filesystem()
        return self._fs

    def _make_filesystem(self) -> pafs.FileSystem:
        if self.scheme == "file":
            return pafs.LocalFileSystem()
        cfg = self.storage
        kwargs: dict[str, Any] = {"region": cfg.region, "allow_bucket_creation": True}
        if cfg.access_key_id:
            kwargs.update(access_key=cfg.access_key_id, secret_key=cfg.secret_access_key)
        if cfg.endpoint_url:
            endpoint = urlparse(cfg.endpoint_url)
            kwargs.update(endpoint_override=endpoint.netloc or endpoint.path, scheme=endpoint.scheme or "http")
            # self-hosted S3 servers address buckets by path, not by virtual host
            kwargs["force_virtual_addressing"] = False
        return pafs.S3FileSystem(**kwargs)

    # -- paths ---------------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        """Path inside `self.fs` (no scheme)."""
        rel = "/".join(p.strip("/") for p in parts if p)
        return f"{self._base}/{rel}" if rel else self._base

    def uri(self, *parts: str) -> str:
        """Full URI for tools that take one (DuckDB, Ray, users)."""
        return f"s3://{self.path(*parts)}" if self.scheme == "s3" else self.path(*parts)

    def relative(self, fs_path: str) -> str:
        prefix = self._base + "/"
        if not fs_path.startswith(prefix):
            raise ValueError(f"{fs_path!r} is not inside lake {self.root_uri!r}")
        return fs_path[len(prefix):]

    # -- reading and writing ------------------------------------------------------------------

    def ensure_root(self) -> None:
        if self.scheme == "s3":
            if not self.exists_fs(self.bucket):
                self.fs.create_dir(self.bucket, recursive=False)
        else:
            Path(self._base).mkdir(parents=True, exist_ok=True)

    def exists_fs(self, fs_path: str) -> bool:
        return self.fs.get_file_info(fs_path).type != pafs.FileType.NotFound

    def exists(self, rel: str) -> bool:
        return self.exists_fs(self.path(rel))

    def list_files(self, rel_dir: str, suffix: str = "") -> list[FileEntry]:
        """Files under a folder, recursively, sorted by path. A missing folder lists nothing."""
        selector = pafs.FileSelector(self.path(rel_dir), recursive=True, allow_not_found=True)
        entries = [
            FileEntry(self.relative(info.path), info.size or 0, info.mtime_ns or 0)
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and info.path.endswith(suffix)
            and not Path(info.path).name.startswith((".", "_tmp"))
        ]
        return sorted(entries, key=lambda e: e.path)

    def list_dirs(self, rel_dir: str) -> list[str]:
        selector = pafs.FileSelector(self.path(rel_dir), recursive=False, allow_not_found=True)
        return sorted(
            Path(info.path).name for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.Directory
        )

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as handle:
            return handle.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write so that readers see either nothing or the whole file.

        S3 PUTs are atomic; on local disk write a temporary file and rename it over the target.
        """
        target = self.path(rel)
        if self.scheme == "s3":
            with self.fs.open_output_stream(target) as out:
                out.write(data)
            return
        parent = str(Path(target).parent)
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/_tmp-{uuid.uuid4().hex}"
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        os.replace(tmp, target)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def write_table(self, rel: str, table: pa.Table, **parquet_options: Any) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, **parquet_options)
        self.write_bytes(rel, buffer.getvalue())

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(rel), filesystem=self.fs, columns=columns)

    def parquet_metadata(self, rel: str) -> pq.FileMetaData:
        with self.fs.open_input_file(self.path(rel)) as handle:
            return pq.ParquetFile(handle).metadata

    def delete_dir(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_dir(self.path(rel))

    def iter_parquet_batches(self, rel: str, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        with self.fs.open_input_file(self.path(rel)) as handle:
            yield from pq.ParquetFile(handle).iter_batches(columns=columns)

    # -- other clients ----------------------------------------------------------------------------

    def duckdb_connect(self, database: str = ":memory:"):
        """A DuckDB connection that can read this lake (httpfs and an S3 secret when remote)."""
        import duckdb

        con = duckdb.connect(database)
        if self.scheme == "s3":
            _load_httpfs(con)
            cfg = self.storage
            options = ["TYPE s3", f"REGION {sql_literal(cfg.region)}", "URL_STYLE 'path'"]
            if cfg.access_key_id:
                options += [f"KEY_ID {sql_literal(cfg.access_key_id)}",
                            f"SECRET {sql_literal(cfg.secret_access_key or '')}"]
            if cfg.endpoint_url:
                endpoint = urlparse(cfg.endpoint_url)
                options += [f"ENDPOINT {sql_literal(endpoint.netloc)}",
                            f"USE_SSL {'true' if endpoint.scheme == 'https' else 'false'}"]
            # no PERSISTENT: the secret lives in this session only, never in a database file or ~/.duckdb
            con.execute(f"CREATE OR REPLACE SECRET lake_s3 ({', '.join(options)})")
        return con

    def boto3_client(self):
        import boto3

        cfg = self.storage
        return boto3.client(
            "s3",
            endpoint_url=cfg.endpoint_url,
            region_name=cfg.region,
            aws_access_key_id=cfg.access_key_id,
            aws_secret_access_key=cfg.secret_access_key,
        )


def _load_httpfs(con) -> None:
    """Load httpfs from the pinned wheel; this machine cannot download extensions."""
    import duckdb
    import duckdb_extension_httpfs

    root = Path(duckdb_extension_httpfs.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    candidates = sorted(root.glob("*.duckdb_extension"))
    if not candidates:
        raise RuntimeError(
            f"no httpfs extension for duckdb {duckdb.__version__} under {root}; "
            "pin duckdb-extension-httpfs to the same version as duckdb"
        )
    con.execute(f"LOAD {sql_literal(str(candidates[0]))}")


def sql_literal(text: str) -> str:
    """`text` as a SQL string literal (DuckDB): the one place quotes are escaped."""
    return "'" + str(text).replace("'", "''") + "'"
