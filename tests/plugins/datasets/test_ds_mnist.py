"""``mnist`` and ``fashion-mnist``: parsing, locating, downloading, real data, class imbalance."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest
import torch

import advx
from advx.plugins.datasets import mnist as mnist_mod

README_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
README_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def reg():
    return advx.Registry.discover()


# -- small files written by the tests ---------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_load_small_files_shapes_and_scaling(reg, fmt, tmp_path, name):
    arrays = fmt.write_mnist_dir(tmp_path / name)
    ds = reg.dataset(name, data_dir=str(tmp_path))  # found in data_dir/<name>/
    train, test = ds.load("train"), ds.load("test")
    assert isinstance(train, torch.utils.data.TensorDataset)
    x, y = train.tensors
    assert x.shape == (30, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min().item() == 0.0 and x.max().item() == 1.0
    torch.testing.assert_close(x[:, 0], torch.from_numpy(arrays["train_x"]).float() / 255)
    assert y.tolist() == arrays["train_y"].tolist()
    assert len(test) == 20 and test.tensors[1].tolist() == arrays["test_y"].tolist()
    info = ds.info()
    assert info.input_shape == tuple(x.shape[1:]) and info.num_classes == 10 and info.bounds == (0.0, 1.0)


def test_data_dir_may_be_the_files_folder_itself(reg, fmt, tmp_path):
    fmt.write_mnist_dir(tmp_path)
    assert len(reg.dataset("mnist", data_dir=str(tmp_path)).load("test")) == 20


def test_advx_data_env(reg, fmt, tmp_path, monkeypatch):
    fmt.write_mnist_dir(tmp_path / "env" / "mnist")
    monkeypatch.setenv("ADVX_DATA", str(tmp_path / "env"))
    assert len(reg.dataset("mnist").load("train")) == 30


def test_user_cache_is_the_last_resort(reg, fmt, isolated):
    fmt.write_mnist_dir(isolated / "fashion-mnist")
    assert len(reg.dataset("fashion-mnist").load("test")) == 20


def test_uncompressed_idx_files_are_accepted(reg, fmt, tmp_path):
    fmt.write_mnist_dir(tmp_path)
    for f in fmt.MNIST_FILES[2:]:
        raw = gzip.decompress((tmp_path / f).read_bytes())
        (tmp_path / f).unlink()
        (tmp_path / f[: -len(".gz")]).write_bytes(raw)
    assert len(reg.dataset("mnist", data_dir=str(tmp_path)).load("test")) == 20


def test_swapped_files_give_magic_error(reg, fmt, tmp_path):
    fmt.write_mnist_dir(tmp_path)
    imgs, lbls = tmp_path / fmt.MNIST_FILES[2], tmp_path / fmt.MNIST_FILES[3]
    a, b = imgs.read_bytes(), lbls.read_bytes()
    imgs.write_bytes(b)
    lbls.write_bytes(a)
    with pytest.raises(advx.DataError, match=r"t10k-images-idx3-ubyte.gz: wrong IDX magic number 2049") as ei:
        reg.dataset("mnist", data_dir=str(tmp_path)).load("test")
    fmt.assert_one_line(ei.value)


def test_truncated_local_file_is_data_error(reg, fmt, tmp_path):
    fmt.write_mnist_dir(tmp_path)
    p = tmp_path / fmt.MNIST_FILES[0]
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(advx.DataError, match=r"train-images-idx3-ubyte.gz: corrupted or truncated gzip"):
        reg.dataset("mnist", data_dir=str(tmp_path)).load("train")


def test_header_size_mismatch_is_data_error(reg, fmt, tmp_path):
    fmt.write_mnist_dir(tmp_path)
    p = tmp_path / fmt.MNIST_FILES[2]
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-784]))  # one image short
    with pytest.raises(advx.DataError, match=r"t10k-images-idx3-ubyte.gz: IDX header says 20x28x28"):
        reg.dataset("mnist", data_dir=str(tmp_path)).load("test")


def test_missing_files_offline(reg, tmp_path):
    ds = reg.dataset("mnist", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(advx.DataError) as ei:
        ds.load("test")
    msg = ei.value.args[0]
    assert "\n" not in msg
    assert "'mnist': missing t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz" in msg
    assert f"looked in {tmp_path / 'nowhere'}, {tmp_path / 'nowhere' / 'mnist'}" in msg
    assert "download failed" in msg and "ADVX_DATA" in msg


def test_absent_data_leaves_no_folder_behind(reg, tmp_path, monkeypatch):
    """Offline, with ADVX_DATA or data_dir pointing nowhere: the one-line error, and the
    folders the download would have gone into are not left created."""
    monkeypatch.setenv("ADVX_DATA", str(tmp_path / "nowhere" / "data"))
    with pytest.raises(advx.DataError, match="download failed"):
        reg.dataset("mnist").load("test")
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(advx.DataError, match="download failed"):
        reg.dataset("mnist", data_dir=str(tmp_path / "elsewhere")).load("test")
    assert not (tmp_path / "elsewhere").exists()
    (tmp_path / "mine").mkdir()  # a folder that was there stays
    with pytest.raises(advx.DataError):
        reg.dataset("mnist", data_dir=str(tmp_path / "mine")).load("test")
    assert (tmp_path / "mine").is_dir()


def test_a_spec_with_absent_data_fails_before_any_work(tmp_path, monkeypatch, capsys):
    """A spec whose dataset is neither present nor downloadable fails when it is planned, in
    ``--dry-run`` as in a run: one line, nothing trained, no results file, no data folder."""
    from advx.cli import main

    monkeypatch.setenv("ADVX_DATA", str(tmp_path / "nowhere"))
    spec = tmp_path / "s.toml"
    spec.write_text(
        f'[matrix]\nname = "absent"\ncache_dir = "{tmp_path / "cache"}"\n[[datasets]]\nname = "mnist"\n'
        '[[models]]\nname = "mlp"\n[[attacks]]\nname = "fgsm"\n'
    )
    for extra in (["--dry-run"], []):
        assert main(["run", str(spec), "--db", str(tmp_path / "r.db"), *extra]) == 1
        captured = capsys.readouterr()
        assert captured.err.startswith("[DataError]: dataset 'mnist': missing train-images-idx3-ubyte.gz")
        assert captured.err.count("\n") == 1 and "cell" not in captured.out
    assert [p.name for p in tmp_path.iterdir()] == ["s.toml"]


def test_missing_files_download_disabled_uses_cache_location(reg, isolated):
    with pytest.raises(advx.DataError, match=rf"looked in {isolated / 'mnist'}; download is disabled"):
        reg.dataset("mnist", download=False).load("train")


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def test_download_verified_then_loaded(reg, fmt, tmp_path, serve, monkeypatch):
    src = tmp_path / "server"
    fmt.write_mnist_dir(src)
    md5 = {k: _md5((src / f).read_bytes()) for k, f in zip(mnist_mod.Mnist.MD5, fmt.MNIST_FILES)}
    monkeypatch.setattr(mnist_mod.Mnist, "MD5", md5)
    first, second = mnist_mod.Mnist.MIRRORS
    fetched = serve({second + f: src / f for f in fmt.MNIST_FILES})  # first mirror is down
    dest = tmp_path / "dl"
    ds = reg.dataset("mnist", data_dir=str(dest))
    assert len(ds.load("test")) == 20
    assert fetched == [first + fmt.MNIST_FILES[2], second + fmt.MNIST_FILES[2],
                       first + fmt.MNIST_FILES[3], second + fmt.MNIST_FILES[3]]
    assert sorted(p.name for p in dest.iterdir()) == sorted(fmt.MNIST_FILES[2:])
    fetched.clear()
    assert len(ds.load("test")) == 20 and fetched == []  # now found locally


def test_download_with_wrong_checksum_is_refused(reg, fmt, tmp_path, serve):
    src = tmp_path / "server"
    fmt.write_mnist_dir(src)  # random content: not the official md5
    serve({m + f: src / f for m in mnist_mod.Mnist.MIRRORS for f in fmt.MNIST_FILES})
    dest = tmp_path / "dl"
    with pytest.raises(advx.DataError, match=r"t10k-images-idx3-ubyte.gz: checksum mismatch on download") as ei:
        reg.dataset("mnist", data_dir=str(dest)).load("test")
    fmt.assert_one_line(ei.value)
    assert not dest.exists()  # nothing kept, not even the folder the download created


def test_invalid_config_is_one_line_config_error(reg):
    with pytest.raises(advx.ConfigError, match=r'dataset "mnist": download: .*; nonsense: unknown field'):
        reg.dataset("mnist", download="maybe", nonsense=1)


# -- real data --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_mnist(reg, shared_data):
    ds = reg.dataset("mnist", data_dir=str(shared_data), download=False)
    return ds, ds.load("train"), ds.load("test")


def test_real_mnist_counts_and_range(real_mnist):
    _, train, test = real_mnist
    assert len(train) == 60000 and len(test) == 10000
    assert torch.bincount(train.tensors[1]).tolist() == README_TRAIN_COUNTS
    assert torch.bincount(test.tensors[1]).tolist() == README_TEST_COUNTS
    x = train.tensors[0]
    assert x.shape == (60000, 1, 28, 28) and x.min() == 0 and x.max() == 1


def test_real_mnist_statistics_match_info(real_mnist):
    ds, train, _ = real_mnist
    x = train.tensors[0]
    info = ds.info()
    assert abs(x.mean().item() - info.mean[0]) < 1e-3 and abs(x.std().item() - info.std[0]) < 1e-3


def test_real_mnist_checksums_verify(reg, shared_data):
    ds = reg.dataset("mnist", data_dir=str(shared_data / "mnist"), download=False, verify_checksums=True)
    assert len(ds.load("test")) == 10000


def test_real_fashion_mnist(reg, shared_data):
    ds = reg.dataset("fashion-mnist", data_dir=str(shared_data), download=False)
    train, test = ds.load("train"), ds.load("test")
    assert torch.bincount(train.tensors[1]).tolist() == [6000] * 10
    assert torch.bincount(test.tensors[1]).tolist() == [1000] * 10
    info = ds.info()
    assert info.class_names[0] == "T-shirt/top" and info.class_names[9] == "Ankle boot"
    assert abs(train.tensors[0].mean().item() - info.mean[0]) < 1e-3


def test_real_mnist_is_parsed_once_per_process(reg, shared_data, real_mnist, monkeypatch):
    from advx.plugins.datasets import _files

    def fail(*a, **k):
        raise AssertionError("file read again")

    monkeypatch.setattr(_files, "read_gzip", fail)
    again = reg.dataset("mnist", data_dir=str(shared_data), download=False).load("train")
    assert len(again) == 60000
    # each load hands out its own tensors: writing to one never alters the cache
    again.tensors[0][0].fill_(0.5)
    assert real_mnist[1].tensors[0][0].max() == 1.0


# -- class imbalance (the shared class_ratios option) -----------------------------------------


def test_class_ratios_on_real_mnist(reg, shared_data, real_mnist):
    ds = reg.dataset("mnist", data_dir=str(shared_data), download=False, class_ratios={0: 0.1, 3: 0.5})
    train = advx.load_split(ds, "train")
    counts = torch.bincount(train.tensors[1], minlength=10).tolist()
    expected = list(README_TRAIN_COUNTS)
    expected[0], expected[3] = round(0.1 * 5923), round(0.5 * 6131)
    assert counts == expected
    # test split untouched
    assert torch.bincount(advx.load_split(ds, "test").tensors[1]).tolist() == README_TEST_COUNTS
    # the kept examples are real examples of the class, in original order
    full_x, full_y = real_mnist[1].tensors
    kept0 = train.tensors[0][train.tensors[1] == 0]
    assert any(torch.equal(kept0[0], full_x[i]) for i in (full_y == 0).nonzero().flatten()[:600].tolist())


def test_class_ratios_seeded_and_reproducible(reg, shared_data, real_mnist):
    def kept_zeros(seed):
        ds = reg.dataset("mnist", data_dir=str(shared_data), download=False, class_ratios={0: 0.1}, imbalance_seed=seed)
        x, y = advx.load_split(ds, "train").tensors
        return x[y == 0]

    a, b, c = kept_zeros(0), kept_zeros(0), kept_zeros(1)
    assert torch.equal(a, b)
    assert a.shape == c.shape and not torch.equal(a, c)


def test_class_ratios_zero_removes_the_class(reg, fmt, tmp_path):
    fmt.write_mnist_dir(tmp_path)
    ds = reg.dataset("mnist", data_dir=str(tmp_path), class_ratios={1: 0.0, 2: 1.0})
    y = advx.load_split(ds, "train").tensors[1]
    assert (y == 1).sum() == 0 and (y == 2).sum() == 3 and len(y) == 27


@pytest.mark.parametrize("ratios", [{0: 1.5}, {0: -0.1}, {"zero": 0.5}])
def test_invalid_class_ratio_is_config_error_naming_the_field(reg, ratios):
    with pytest.raises(advx.ConfigError, match=r'dataset "mnist": class_ratios') as ei:
        reg.dataset("mnist", class_ratios=ratios)
    assert "\n" not in str(ei.value)


def test_class_ratios_on_digits(reg):
    ds = reg.dataset("digits", class_ratios={0: 0.1})
    full = torch.bincount(ds.load("train").tensors[1]).tolist()
    train = advx.load_split(ds, "train")
    counts = torch.bincount(train.tensors[1], minlength=10).tolist()
    assert counts[0] == round(0.1 * full[0]) and counts[1:] == full[1:]
    assert len(advx.load_split(ds, "test")) == 500
    with pytest.raises(advx.ConfigError, match=r'dataset "digits": class_ratios'):
        reg.dataset("digits", class_ratios={0: 2})


def test_class_ratios_do_not_mutate_the_parse_cache(reg, shared_data, real_mnist):
    ds = reg.dataset("mnist", data_dir=str(shared_data), download=False, class_ratios={0: 0.1})
    advx.load_split(ds, "train")
    plain = reg.dataset("mnist", data_dir=str(shared_data), download=False)
    assert np.bincount(plain.arrays("train")[1]).tolist() == README_TRAIN_COUNTS
