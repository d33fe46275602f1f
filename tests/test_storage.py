"""vivi.storage against a real S3-compatible server on 127.0.0.1: objects written whole, ranges
read, refusals named in one line."""
from __future__ import annotations

import pytest

from vivi.storage import StorageError, is_url, join, read_bytes, write_bytes


def test_urls_and_paths_are_told_apart(tmp_path):
    """Catches a local path (or file://) taken for a remote store, or the reverse."""
    assert is_url("s3://bucket/data") and is_url("https://host/x") and is_url("gs://b/p")
    assert not is_url(tmp_path) and not is_url("file:///tmp/x") and not is_url("relative/dir")
    assert join("s3://bucket/data/", "shards", "a.json") == "s3://bucket/data/shards/a.json"
    assert join(tmp_path, "shards", "a.json") == tmp_path / "shards" / "a.json"


def test_objects_are_written_whole_and_read_by_range(s3_server, tmp_path):
    """Catches ranged reads off by one and writes that do not reach the server."""
    bucket = s3_server()
    write_bytes(f"{bucket}/data/blob.bin", bytes(range(256)))
    assert read_bytes(f"{bucket}/data/blob.bin") == bytes(range(256))
    assert read_bytes(f"{bucket}/data/blob.bin", 10, 14) == bytes([10, 11, 12, 13])
    write_bytes(tmp_path / "local.bin", b"abc")
    assert read_bytes(tmp_path / "local.bin", 1, 3) == b"bc"


def test_refusals_name_the_object_and_the_fix(s3_server, monkeypatch):
    """A missing bucket, a missing object and an unreachable server: one line each, no retry
    storm for refusals (catches raw botocore tracebacks reaching the user)."""
    bucket = s3_server()
    with pytest.raises(FileNotFoundError, match="no-such-bucket-here/x: the bucket does not exist: create it"):
        read_bytes("s3://no-such-bucket-here/x")
    with pytest.raises(FileNotFoundError, match="missing.bin: not found"):
        read_bytes(f"{bucket}/missing.bin")
    import fsspec
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")        # nothing listens there
    monkeypatch.setattr("vivi.storage.BACKOFF_S", 0.01)
    fsspec.filesystem("s3").clear_instance_cache()
    with pytest.raises(StorageError, match=r"cannot reach the object store at http://127.0.0.1:9 .*after 5 tries"):
        read_bytes(f"{bucket}/x")
    fsspec.filesystem("s3").clear_instance_cache()


def test_wrong_credentials_are_named_with_the_fix(s3_server, world, tmp_path, capsys, monkeypatch):
    """A store that checks credentials (moto with authentication on) refuses unknown keys: `vivi
    ingest --out s3://...` stops at once with one line saying to set the credentials, before any
    video is decoded (catches a botocore traceback, or a run that decodes everything first)."""
    import fsspec
    from conftest import start_s3_server

    from vivi.cli import main
    server, endpoint = start_s3_server(INITIAL_NO_AUTH_ACTION_COUNT="0")
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-user")
        fsspec.filesystem("s3").clear_instance_cache()
        assert main(["ingest", str(world / "videos"), "--out", "s3://some-bucket/data", "--workers", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("vivi ingest: error: s3://some-bucket/data/plan.json: access denied")
        assert "set the credentials (AWS_ACCESS_KEY_ID" in err and len(err.splitlines()) == 1
    finally:
        fsspec.filesystem("s3").clear_instance_cache()
        server.terminate()
        server.wait(timeout=10)
