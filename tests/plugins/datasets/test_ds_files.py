"""The shared file helpers: locating, downloading with checksums, IDX parsing, safe unpickling, safe tar."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

import advx
from advx.plugins.datasets import _files
from advx.plugins.datasets._files import FileDatasetConfig, Remote

# -- locating -------------------------------------------------------------------------------


def test_search_dirs_data_dir_is_searched_directly_and_by_name(tmp_path):
    dirs = _files.search_dirs("mnist", str(tmp_path))
    assert dirs == [tmp_path, tmp_path / "mnist"]


def test_search_dirs_env_then_cache(tmp_path, monkeypatch, isolated):
    assert _files.search_dirs("mnist", None) == [isolated / "mnist"]
    monkeypatch.setenv("ADVX_DATA", str(tmp_path / "d"))
    assert _files.search_dirs("mnist", None) == [tmp_path / "d" / "mnist"]
    # an explicit data_dir wins over the environment
    assert _files.search_dirs("mnist", str(tmp_path / "x"))[0] == tmp_path / "x"


def test_search_dirs_home_cache_without_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _files.search_dirs("cifar-10", None) == [tmp_path / ".cache" / "advx" / "data" / "cifar-10"]


def test_download_dir_prefers_existing_named_subfolder(tmp_path):
    assert _files.download_dir("mnist", str(tmp_path)) == tmp_path
    (tmp_path / "mnist").mkdir()
    assert _files.download_dir("mnist", str(tmp_path)) == tmp_path / "mnist"


# -- IDX --------------------------------------------------------------------------------------


def test_parse_idx_roundtrip(fmt):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = _files.parse_idx(fmt.idx_bytes(arr), Path("f"), 2051)
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


def test_parse_idx_wrong_magic_names_file(fmt):
    labels = fmt.idx_bytes(np.zeros(5, dtype=np.uint8))  # magic 2049
    with pytest.raises(advx.DataError, match=r"labels.gz: wrong IDX magic number 2049, expected 2051") as ei:
        _files.parse_idx(labels, Path("labels.gz"), 2051)
    fmt.assert_one_line(ei.value)


def test_parse_idx_size_mismatch_is_data_error(fmt):
    data = fmt.idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    with pytest.raises(advx.DataError, match=r"header says 3x28x28 .* but the file has") as ei:
        _files.parse_idx(data[:-10], Path("imgs"), 2051)
    fmt.assert_one_line(ei.value)
    with pytest.raises(advx.DataError, match="header says"):
        _files.parse_idx(data + b"\0", Path("imgs"), 2051)
    with pytest.raises(advx.DataError, match="too short"):
        _files.parse_idx(b"\0\0", Path("imgs"), 2051)
    with pytest.raises(advx.DataError, match="truncated IDX header"):
        _files.parse_idx(data[:8], Path("imgs"), 2051)


def test_truncated_gzip_is_data_error(fmt, tmp_path):
    p = tmp_path / "x.gz"
    full = gzip.compress(fmt.idx_bytes(np.ones((50, 28, 28), dtype=np.uint8)))
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(advx.DataError, match=r"x.gz: corrupted or truncated gzip") as ei:
        _files.read_gzip(p)
    fmt.assert_one_line(ei.value)
    p.write_bytes(full[:10] + b"\xff" * (len(full) - 10))  # garbage deflate stream
    with pytest.raises(advx.DataError, match="corrupted or truncated gzip"):
        _files.read_gzip(p)


def test_read_gzip_accepts_uncompressed(tmp_path):
    p = tmp_path / "raw"
    p.write_bytes(b"\0\0\x08\x01\0\0\0\0")
    assert _files.read_gzip(p) == b"\0\0\x08\x01\0\0\0\0"


def test_idx_pair_count_mismatch_and_label_range(fmt, tmp_path):
    x = fmt.write_idx_gz(tmp_path / "x.gz", np.zeros((4, 28, 28), dtype=np.uint8))
    y = fmt.write_idx_gz(tmp_path / "y.gz", np.zeros(3, dtype=np.uint8))
    with pytest.raises(advx.DataError, match="4 images but .* 3 labels"):
        _files.load_idx_pair(x, y)
    y = fmt.write_idx_gz(tmp_path / "y2.gz", np.array([0, 1, 2, 10], dtype=np.uint8))
    with pytest.raises(advx.DataError, match="label 10 out of range"):
        _files.load_idx_pair(x, y)


def test_idx_pair_is_cached_and_read_only(fmt, tmp_path):
    x = fmt.write_idx_gz(tmp_path / "x.gz", np.zeros((4, 28, 28), dtype=np.uint8))
    y = fmt.write_idx_gz(tmp_path / "y.gz", np.arange(4, dtype=np.uint8))
    a = _files.load_idx_pair(x, y)
    b = _files.load_idx_pair(x, y)
    assert a[0] is b[0] and a[1] is b[1]
    assert not a[0].flags.writeable
    # a replaced file (new mtime/size) is read again, not served stale from the cache
    fmt.write_idx_gz(y, np.arange(4, dtype=np.uint8)[::-1].copy())
    os.utime(y, ns=(1, 1))
    c = _files.load_idx_pair(x, y)
    np.testing.assert_array_equal(c[1], [3, 2, 1, 0])


# -- download ---------------------------------------------------------------------------------


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def test_download_verified_falls_back_to_next_mirror(tmp_path, serve):
    payload = b"hello"
    fetched = serve({"https://b.example/f.gz": payload})
    remote = Remote("f.gz", _md5(payload), ("https://a.example/", "https://b.example"))
    p = _files.download_verified(remote, tmp_path / "dl")
    assert p == tmp_path / "dl" / "f.gz" and p.read_bytes() == payload
    assert fetched == ["https://a.example/f.gz", "https://b.example/f.gz"]
    assert [q.name for q in (tmp_path / "dl").iterdir()] == ["f.gz"]  # no .part left behind


def test_download_checksum_mismatch_keeps_nothing(fmt, tmp_path, serve):
    serve({"https://a.example/f.gz": b"tampered"})
    remote = Remote("f.gz", _md5(b"genuine"), ("https://a.example/",))
    with pytest.raises(advx.DataError, match=r"f.gz: checksum mismatch on download .* expected") as ei:
        _files.download_verified(remote, tmp_path)
    fmt.assert_one_line(ei.value)
    assert list(tmp_path.iterdir()) == []


def test_download_mirror_with_bad_bytes_then_good_one(tmp_path, serve):
    serve({"https://a.example/f": b"tampered", "https://b.example/f": b"genuine"})
    remote = Remote("f", _md5(b"genuine"), ("https://a.example", "https://b.example"))
    assert _files.download_verified(remote, tmp_path).read_bytes() == b"genuine"


def test_missing_offline_is_one_line_naming_files_and_places(fmt, tmp_path):
    cfg = FileDatasetConfig(data_dir=str(tmp_path / "data"))
    remotes = {"a": Remote("a.gz", "0" * 32, ("https://a.example/",))}
    with pytest.raises(advx.DataError) as ei:
        _files.locate_or_download("thing", {"a": ("a.gz",)}, cfg, remotes=remotes)
    msg = fmt.assert_one_line(ei.value)
    assert "missing a.gz" in msg
    assert str(tmp_path / "data") in msg and str(tmp_path / "data" / "thing") in msg
    assert "download failed" in msg and "name resolution" in msg
    assert "data_dir" in msg and "ADVX_DATA" in msg


def test_download_disabled_says_so(tmp_path):
    cfg = FileDatasetConfig(data_dir=str(tmp_path), download=False)
    with pytest.raises(advx.DataError, match="missing a.gz; looked in .*; download is disabled"):
        _files.locate_or_download("thing", {"a": ("a.gz",)}, cfg)


def test_verify_checksums_checks_local_files(tmp_path):
    (tmp_path / "a.gz").write_bytes(b"local")
    files = {"a": ("a.gz",)}
    ok = FileDatasetConfig(data_dir=str(tmp_path), verify_checksums=True)
    assert _files.locate_or_download("t", files, ok, official_md5={"a": _md5(b"local")})["a"] == tmp_path / "a.gz"
    with pytest.raises(advx.DataError, match=r"a.gz: md5 .* differs from the official"):
        _files.locate_or_download("t", files, ok, official_md5={"a": _md5(b"other")})
    # off by default: structure is checked by the parsers instead
    off = FileDatasetConfig(data_dir=str(tmp_path))
    assert _files.locate_or_download("t", files, off, official_md5={"a": _md5(b"other")})


# -- restricted unpickler ---------------------------------------------------------------------


class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').system('true')",))


def test_safe_unpickle_reads_a_cifar_batch(fmt):
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    obj = _files.safe_unpickle(fmt.cifar_batch_bytes(data, [3, 7]), Path("b"))
    assert obj[b"labels"] == [3, 7]
    np.testing.assert_array_equal(obj[b"data"], data)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pickle_is_rejected_without_executing(fmt, tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(f"touch {marker}")}, protocol=protocol)
    # sanity: the payload really would run the command with an ordinary unpickler
    assert b"system" in payload
    with pytest.raises(advx.DataError, match=r"evil_batch: unexpected pickle content: refusing to load global .*system") as ei:
        _files.safe_unpickle(payload, Path("evil_batch"))
    fmt.assert_one_line(ei.value)
    assert not marker.exists()


def test_other_globals_are_rejected():
    for payload in (
        pickle.dumps(_EvalEvil(), protocol=2),
        pickle.dumps(io.BytesIO, protocol=2),
        pickle.dumps(np.float64(1.0), protocol=2),  # numpy scalars never occur in CIFAR files
    ):
        with pytest.raises(advx.DataError, match="refusing to load global"):
            _files.safe_unpickle(payload, Path("b"))


def test_truncated_pickle_is_data_error(fmt):
    raw = fmt.cifar_batch_bytes(np.zeros((2, 3072), np.uint8), [0, 1])
    with pytest.raises(advx.DataError, match=r"b: corrupted or truncated pickle") as ei:
        _files.safe_unpickle(raw[: len(raw) // 2], Path("b"))
    fmt.assert_one_line(ei.value)


@pytest.mark.parametrize(
    "obj, match",
    [
        ([1, 2], "expected a pickled dict, got list"),
        ({b"data": 1}, "has keys 'data' and 'labels'"),
        ({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, r"shape \(N, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "must be a uint8 array"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1 labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"within 0..9"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, "x"]}, "list of integers"),
    ],
)
def test_cifar_batch_content_is_checked(fmt, tmp_path, obj, match):
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(advx.DataError, match=match) as ei:
        _files.load_cifar_batch(p)
    assert str(p) in fmt.assert_one_line(ei.value)


def test_cifar_batch_shape_and_cache(fmt, tmp_path):
    data, labels = fmt.write_cifar_batch(tmp_path / "b", n=5)
    x, y = _files.load_cifar_batch(tmp_path / "b")
    assert x.shape == (5, 3, 32, 32) and y.dtype == np.int64
    # rows are R(1024) G(1024) B(1024), each row-major 32x32
    assert x[1, 1, 0, 0] == data[1, 1024] and x[1, 2, 31, 31] == data[1, 3071] and x[1, 0, 1, 0] == data[1, 32]
    assert _files.load_cifar_batch(tmp_path / "b")[0] is x


# -- safe tar extraction ----------------------------------------------------------------------


def _tar_with(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def test_extract_members_writes_only_wanted_names(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    tar = tmp_path / "a.tar.gz"
    tar.write_bytes(
        _tar_with(
            {"d/good": b"1", "../escape": b"2", "/abs/escape": b"3", "d/other": b"4"},
            symlinks={"d/link": "/etc/passwd"},
        )
    )
    written = _files.extract_members(
        tar, {"d/good": "good", "d/link": "link", "../escape": "escape"}, dest
    )
    # the archive's ../escape is written under the name *we* chose, inside dest; links are skipped
    assert sorted(p.name for p in written) == ["escape", "good"]
    assert sorted(p.name for p in dest.iterdir()) == ["escape", "good"]
    assert not (tmp_path / "escape").exists() and not (dest / "link").exists()


def test_extract_members_bad_archive(tmp_path):
    tar = tmp_path / "a.tar.gz"
    tar.write_bytes(b"not a tar")
    with pytest.raises(advx.DataError, match="a.tar.gz: cannot extract"):
        _files.extract_members(tar, {"x": "x"}, tmp_path)


def test_codecs_encode_is_admitted_only_as_latin1():
    # Python 3 writes bytes at protocol 2 as _codecs.encode(str, 'latin1'); anything else is refused
    assert _files.safe_unpickle(pickle.dumps(b"\xff\x00a", protocol=2), Path("b")) == b"\xff\x00a"
    evil = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00utf-7\x86R."
    with pytest.raises(advx.DataError, match="refusing _codecs.encode"):
        _files.safe_unpickle(evil, Path("b"))
