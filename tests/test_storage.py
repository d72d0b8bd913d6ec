"""The lake abstraction behaves the same on local disk and on a real S3 server."""

import pyarrow as pa
import pytest

from lakelens.infra.storage import Lake


def test_bytes_written_are_read_back_and_listed(lake):
    lake.ensure_root()
    lake.write_bytes("a/b/one.bin", b"first")
    lake.write_bytes("a/two.bin", b"second")
    assert lake.read_bytes("a/b/one.bin") == b"first"
    assert [e.path for e in lake.list_files("a")] == ["a/b/one.bin", "a/two.bin"]
    assert lake.list_dirs("a") == ["b"]
    assert lake.list_files("missing") == []


def test_overwrite_replaces_whole_file_and_leaves_no_temporaries(lake):
    lake.ensure_root()
    lake.write_bytes("x/data.json", b"old")
    lake.write_bytes("x/data.json", b"new content")
    assert lake.read_bytes("x/data.json") == b"new content"
    assert [e.path for e in lake.list_files("x")] == ["x/data.json"]


def test_parquet_round_trip_and_duckdb_reads_the_same_rows(lake):
    lake.ensure_root()
    table = pa.table({"id": ["a", "b", "c"], "v": [1.5, 2.5, 3.5]})
    lake.write_table("t/dt=2026-01-01/part-0.parquet", table)
    assert lake.read_table("t/dt=2026-01-01/part-0.parquet").equals(table)
    con = lake.duckdb_connect()
    total = con.execute(
        f"SELECT count(*), sum(v) FROM read_parquet('{lake.uri('t')}/**/*.parquet', hive_partitioning=true)"
    ).fetchone()
    assert total == (3, 7.5)


def test_boto3_sees_objects_written_through_the_lake(lake):
    if lake.scheme != "s3":
        pytest.skip("boto3 speaks to S3 lakes only")
    lake.ensure_root()
    lake.write_bytes("probe/hello.txt", b"hello")
    key = lake.path("probe/hello.txt").split("/", 1)[1]
    body = lake.boto3_client().get_object(Bucket=lake.bucket, Key=key)["Body"].read()
    assert body == b"hello"


def test_lake_uri_forms_are_recognised(tmp_path):
    assert Lake(tmp_path).scheme == "file"
    assert Lake(f"file://{tmp_path}").root_uri == str(tmp_path.resolve())
    s3 = Lake("s3://bucket/some/prefix/")
    assert s3.scheme == "s3" and s3.uri("events") == "s3://bucket/some/prefix/events"
    with pytest.raises(ValueError, match="unsupported lake root"):
        Lake("gs://bucket/x")
    with pytest.raises(ValueError, match="names no bucket"):
        Lake("s3:///prefix")


def test_lake_survives_pickling_for_ray_tasks(lake):
    import pickle

    lake.ensure_root()
    lake.write_bytes("p.txt", b"x")
    clone = pickle.loads(pickle.dumps(lake))
    assert clone.read_bytes("p.txt") == b"x"
