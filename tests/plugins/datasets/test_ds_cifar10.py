"""``cifar-10``: batches, partial training sets, tarball download and extraction, real data."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import advx
from advx.plugins.datasets import cifar10 as cifar_mod


@pytest.fixture(scope="module")
def reg():
    return advx.Registry.discover()


def _write_all(fmt, d: Path, batches=(1, 2, 3, 4, 5), n=12) -> dict[str, tuple]:
    out = {}
    for i in batches:
        out[f"data_batch_{i}"] = fmt.write_cifar_batch(d / f"data_batch_{i}", n=n, seed=i)
    out["test_batch"] = fmt.write_cifar_batch(d / "test_batch", n=n, seed=99)
    return out


def test_load_small_batches(reg, fmt, tmp_path):
    written = _write_all(fmt, tmp_path / "cifar-10")
    ds = reg.dataset("cifar-10", data_dir=str(tmp_path))
    train, test = ds.load("train"), ds.load("test")
    assert isinstance(train, torch.utils.data.TensorDataset)
    assert len(train) == 60 and len(test) == 12
    x, y = train.tensors
    assert x.shape == (60, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    # batches in order 1..5; pixel layout R,G,B planes
    d1, l1 = written["data_batch_1"]
    torch.testing.assert_close(x[:12].reshape(12, 3072), torch.from_numpy(d1).float() / 255)
    assert y[:12].tolist() == l1.tolist()
    assert y[12:24].tolist() == written["data_batch_2"][1].tolist()
    assert ds.info().input_shape == (3, 32, 32) and ds.info().class_names[0] == "airplane"


def test_extracted_tarball_folder_is_found(reg, fmt, tmp_path):
    _write_all(fmt, tmp_path / "cifar-10-batches-py")
    assert len(reg.dataset("cifar-10", data_dir=str(tmp_path)).load("test")) == 12


def test_missing_training_batches_is_an_error_unless_asked(reg, fmt, tmp_path):
    _write_all(fmt, tmp_path, batches=(1, 2))
    ds = reg.dataset("cifar-10", data_dir=str(tmp_path), download=False)
    assert len(ds.load("test")) == 12  # the test split needs only test_batch
    with pytest.raises(advx.DataError) as ei:
        ds.load("train")
    msg = fmt.assert_one_line(ei.value)
    assert "missing data_batch_3, data_batch_4, data_batch_5" in msg
    assert str(tmp_path) in msg and "train_batches" in msg
    for tb in ([1, 2], 2):
        part = reg.dataset("cifar-10", data_dir=str(tmp_path), train_batches=tb)
        assert len(part.load("train")) == 24
    assert len(reg.dataset("cifar-10", data_dir=str(tmp_path), train_batches=[2]).load("train")) == 12


@pytest.mark.parametrize("bad", [0, 6, [], [1, 1], [0, 2]])
def test_train_batches_validation(reg, bad):
    with pytest.raises(advx.ConfigError, match=r'dataset "cifar-10": train_batches'):
        reg.dataset("cifar-10", train_batches=bad)


def test_malicious_batch_is_refused_without_executing(reg, fmt, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    _write_all(fmt, tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2))
    with pytest.raises(advx.DataError, match=r"test_batch: unexpected pickle content: refusing to load global posix.system"):
        reg.dataset("cifar-10", data_dir=str(tmp_path)).load("test")
    assert not marker.exists()


def test_wrong_content_is_data_error(reg, fmt, tmp_path):
    _write_all(fmt, tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(advx.DataError, match=r"data_batch_3: 'data' must be a uint8 array of shape \(N, 3072\)"):
        reg.dataset("cifar-10", data_dir=str(tmp_path)).load("train")


def test_latin1_pickles_load_too(reg, tmp_path):
    # a batch written with str keys (what encoding='latin1' readers re-save) is accepted
    d = {"labels": [1, 2], "data": np.full((2, 3072), 7, np.uint8)}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(d, protocol=2))
    x, y = reg.dataset("cifar-10", data_dir=str(tmp_path)).load("test").tensors
    assert y.tolist() == [1, 2] and torch.allclose(x, torch.full_like(x, 7 / 255))


def _tarball(fmt, src: Path, extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(src.iterdir()):
            tar.add(p, arcname=f"cifar-10-batches-py/{p.name}")
        for name, content in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def test_download_extracts_safely(reg, fmt, tmp_path, serve, monkeypatch):
    src = tmp_path / "src"
    _write_all(fmt, src)
    (src / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"]}, protocol=2))
    blob = _tarball(fmt, src, extra={"../../evil.sh": b"rm -rf /", "cifar-10-batches-py/../../evil2": b"x"})
    monkeypatch.setattr(cifar_mod, "TARBALL", cifar_mod.Remote("c.tar.gz", hashlib.md5(blob).hexdigest(), ("https://x/",)))
    fetched = serve({"https://x/c.tar.gz": blob})
    dest = tmp_path / "data"
    ds = reg.dataset("cifar-10", data_dir=str(dest))
    assert len(ds.load("train")) == 60 and fetched == ["https://x/c.tar.gz"]
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    )  # tarball removed, nothing else written
    assert not (tmp_path / "evil.sh").exists() and not (tmp_path / "evil2").exists()
    assert len(ds.load("test")) == 12 and len(fetched) == 1


def test_download_wrong_md5_official_tarball(reg, fmt, tmp_path, serve):
    src = tmp_path / "src"
    _write_all(fmt, src)
    serve({"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz": _tarball(fmt, src)})
    with pytest.raises(advx.DataError, match=r"cifar-10-python.tar.gz: checksum mismatch on download .* c58f30108f718f92721af3b95e74349a"):
        reg.dataset("cifar-10", data_dir=str(tmp_path / "data")).load("test")


def test_offline_missing_everything(reg, tmp_path, isolated):
    with pytest.raises(advx.DataError) as ei:
        reg.dataset("cifar-10").load("test")
    msg = str(ei.value)
    assert "\n" not in msg and "missing test_batch" in msg
    assert str(isolated / "cifar-10") in msg and str(isolated / "cifar-10" / "cifar-10-batches-py") in msg
    assert "download failed" in msg


# -- real data --------------------------------------------------------------------------------


def test_real_cifar10(reg, shared_data):
    ds = reg.dataset("cifar-10", data_dir=str(shared_data), download=False, train_batches=[1, 2])
    test = ds.load("test")
    assert len(test) == 10000 and torch.bincount(test.tensors[1]).tolist() == [1000] * 10
    assert test.tensors[1][:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert (test.tensors[0][0, :, 0, 0] * 255).round().tolist()[0] == 158  # R of pixel (0,0)
    assert (test.tensors[0][0, 0, 0, :3] * 255).round().tolist() == [158, 159, 165]
    train = ds.load("train")
    assert len(train) == 20000
    y = train.tensors[1]
    assert y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert torch.bincount(y[:10000]).tolist() == [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]
    assert torch.bincount(y[10000:]).tolist() == [984, 1007, 1010, 995, 1010, 988, 1008, 1026, 987, 985]
    row0 = (train.tensors[0][0].reshape(-1) * 255).round()
    assert row0[:3].tolist() == [59, 43, 50] and row0[-3:].tolist() == [140, 84, 72]
    # the per-channel statistics declared in info() are those of the training pixels
    mean = train.tensors[0].mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor(ds.info().mean), atol=5e-3)


def test_real_cifar10_default_needs_all_batches(reg, shared_data):
    with pytest.raises(advx.DataError, match="missing data_batch_3, data_batch_4, data_batch_5.*train_batches"):
        reg.dataset("cifar-10", data_dir=str(shared_data), download=False).load("train")


def test_real_cifar10_offline_batches_are_not_the_official_md5(reg, shared_data):
    # documented in shared/data/README.md: the synthetic filenames change the md5
    ds = reg.dataset("cifar-10", data_dir=str(shared_data), download=False, verify_checksums=True)
    with pytest.raises(advx.DataError, match="test_batch: md5 9839a876b77db8b6cecf4bd6df5200d8 differs from the official"):
        ds.load("test")


def test_download_does_not_clobber_present_batches(reg, fmt, tmp_path, serve, monkeypatch):
    src = tmp_path / "src"
    _write_all(fmt, src, n=12)
    blob = _tarball(fmt, src)
    monkeypatch.setattr(cifar_mod, "TARBALL", cifar_mod.Remote("c.tar.gz", hashlib.md5(blob).hexdigest(), ("https://x/",)))
    serve({"https://x/c.tar.gz": blob})
    dest = tmp_path / "data"
    mine = fmt.write_cifar_batch(dest / "data_batch_1", n=5, seed=42)  # a local batch 1 of 5 images
    before = (dest / "data_batch_1").read_bytes()
    train = reg.dataset("cifar-10", data_dir=str(dest)).load("train")
    assert len(train) == 5 + 4 * 12 and train.tensors[1][:5].tolist() == mine[1].tolist()
    assert (dest / "data_batch_1").read_bytes() == before
