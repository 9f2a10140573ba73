"""A result always describes the data it is shown with: what identifies a cell.

The cell key holds the data's fingerprint (training and test files), so changed files are
never served from old results; and what leaves the data identical (where the files are,
whether to download or verify them, a ``samples`` beyond the test split, ``samples`` when
``bucket_samples`` selects the examples, ``imbalance_seed`` without ``class_ratios``)
changes neither the cell key nor the training key. Each test writes a fake MNIST folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import advx
from advx.runtime.training import training_key

_spec = importlib.util.spec_from_file_location(
    "advx_tests_ds_formats", Path(__file__).resolve().parents[2] / "plugins" / "datasets" / "ds_formats.py"
)
FORMATS = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(FORMATS)

REG = advx.Registry.discover()


def spec(data_dir, cache, **dataset):
    return {
        "matrix": {"name": "ident", "samples": 20, "batch_size": 20, "cache_dir": str(cache), "diagnostics": False},
        "datasets": [{"name": "mnist", "data_dir": str(data_dir), "download": False, **dataset}],
        "models": [{"name": "mlp", "hidden": [16], "train": {"epochs": 1}}],
        "attacks": [{"name": "fgsm", "eps": 0.1}],
    }


def keys(s, **matrix):
    s = {**s, "matrix": {**s["matrix"], **matrix}}
    return [c.key for c in advx.plan(advx.MatrixSpec.from_dict(s), REG)]


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "mnist"
    FORMATS.write_mnist_dir(d, n_train=40, n_test=20)
    return d


def test_changed_training_files_are_recomputed_not_served(data, tmp_path):
    s = spec(data, tmp_path / "cache")
    db = tmp_path / "r.db"
    first = advx.run_matrix(s, store=db)
    assert first.done == 1
    assert advx.run_matrix(s, store=db).skipped == 1  # unchanged: resumed
    FORMATS.write_mnist_dir(data, n_train=40, n_test=20, seed=0)
    labels = data / "train-labels-idx1-ubyte.gz"
    arrays = FORMATS.write_mnist_dir(tmp_path / "other", n_train=40, n_test=20, seed=0)
    FORMATS.write_idx_gz(labels, arrays["train_y"][::-1].copy())  # training labels shuffled
    again = advx.run_matrix(s, store=db)
    assert again.skipped == 0 and again.done == 1
    assert any(not t["cached"] for t in again.trainings)  # retrained on the new labels


def test_changed_test_files_are_evaluated_again(data, tmp_path):
    s = spec(data, tmp_path / "cache")
    db = tmp_path / "r.db"
    advx.run_matrix(s, store=db)
    arrays = FORMATS.write_mnist_dir(tmp_path / "other", n_train=40, n_test=20, seed=7)
    FORMATS.write_idx_gz(data / "t10k-images-idx3-ubyte.gz", arrays["test_x"])
    again = advx.run_matrix(s, store=db)
    assert again.skipped == 0 and again.done == 1
    assert all(t["cached"] for t in again.trainings)  # the training files did not change: no retraining


def test_what_leaves_the_data_identical_changes_no_key(data, tmp_path):
    base = keys(spec(data, tmp_path))
    assert keys(spec(str(data) + "/", tmp_path)) == base  # a trailing slash
    # (verify_checksums is marked the same way as download; fake files would fail its check)
    assert keys(spec(data, tmp_path, download=True)) == base  # files present: nothing downloaded either way
    assert keys(spec(data, tmp_path, imbalance_seed=3)) == base  # no class_ratios: the seed selects nothing
    assert keys(spec(data, tmp_path, class_ratios={0: 0.5}, imbalance_seed=3)) != keys(spec(data, tmp_path, class_ratios={0: 0.5}))
    # samples beyond the 20 test examples select them all
    assert keys(spec(data, tmp_path), samples=20) == keys(spec(data, tmp_path), samples=10_000)
    assert keys(spec(data, tmp_path), samples=10) != keys(spec(data, tmp_path), samples=20)
    # bucket_samples selects the examples: samples does not count
    assert keys(spec(data, tmp_path), bucket_samples=3, samples=5) == keys(spec(data, tmp_path), bucket_samples=3, samples=15)


def test_training_key_ignores_where_the_files_are(data, tmp_path):
    model = REG.create("model", "mlp", {"hidden": [16]})
    train = advx.TrainConfig(epochs=1)
    a = REG.create("dataset", "mnist", {"data_dir": str(data), "download": False})
    b = REG.create("dataset", "mnist", {"data_dir": str(data) + "/", "download": True})
    assert training_key(a, model, train, "cpu") == training_key(b, model, train, "cpu")


def test_missing_data_fails_the_plan_before_any_work(tmp_path):
    s = spec(tmp_path / "nowhere", tmp_path / "cache")
    with pytest.raises(advx.AdvxError) as exc:
        advx.plan(advx.MatrixSpec.from_dict(s), REG)
    assert "\n" not in str(exc.value) and "mnist" in str(exc.value)
    assert not (tmp_path / "cache").exists()


def test_where_and_how_files_are_found_is_not_part_of_a_dataset_identity():
    cfg = REG.get("dataset", "mnist").Config(data_dir="/x/", download=False, verify_checksums=True)
    assert not {"data_dir", "download", "verify_checksums"} & set(cfg.identity())
    folder = REG.get("dataset", "imagenet-folder").Config(data_dir="/y")
    assert "data_dir" not in folder.identity() and "train_dir" in folder.identity()
