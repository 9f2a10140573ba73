"""``imagenet-folder``: layout, lazy decoding, resize + center crop, class order, Pillow absent."""

from __future__ import annotations

import builtins
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import advx


@pytest.fixture(scope="module")
def reg():
    return advx.Registry.discover()


def _write_folder(root: Path, Image, spec: dict[str, dict[str, list[tuple[int, int]]]]) -> None:
    """``spec``: split -> class -> list of (width, height); image i of a class has value 10*i+1."""
    for split, classes in spec.items():
        for c, sizes in classes.items():
            d = root / split / c
            d.mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                arr = np.full((h, w, 3), 10 * i + 1, np.uint8)
                arr[:, :, 1] = 100  # green plane constant: checks channel order
                Image.fromarray(arr).save(d / f"img{i}.png")
            (d / "notes.txt").write_text("not an image")


def test_lazy_folder_shapes_labels_and_crop(reg, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    _write_folder(
        tmp_path,
        Image,
        {
            "train": {"n02": [(40, 30)], "n01": [(30, 40), (64, 64)]},
            "val": {"n01": [(50, 20)], "n03": [(20, 20)]},
        },
    )
    ds = reg.dataset("imagenet-folder", data_dir=str(tmp_path), image_size=16)
    info = ds.info()
    assert info.class_names == ("n01", "n02", "n03") and info.num_classes == 3 and info.input_shape == (3, 16, 16)
    train = ds.load("train")
    assert not isinstance(train, torch.utils.data.TensorDataset)  # lazy
    assert train.targets == [0, 0, 1] and len(train) == 3
    x, y = train[2]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 1
    assert torch.allclose(x[1], torch.full((16, 16), 100 / 255))
    assert torch.allclose(x[0], torch.full((16, 16), 1 / 255))
    val = ds.load("test")
    assert val.targets == [0, 2]
    assert val[0][0].shape == (3, 16, 16)  # a 50x20 image: resized then center-cropped
    assert torch.equal(advx.dataset_labels(val), torch.tensor([0, 2]))
    xb, yb = advx.take(val, 2)
    assert xb.shape == (2, 3, 16, 16) and yb.tolist() == [0, 2]


def test_center_crop_keeps_the_center(reg, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    d = tmp_path / "val" / "a"
    d.mkdir(parents=True)
    arr = np.zeros((32, 96, 3), np.uint8)
    arr[:, 32:64] = 255  # white center third, black sides
    Image.fromarray(arr).save(d / "x.png")
    (tmp_path / "val" / "b").mkdir()
    ds = reg.dataset("imagenet-folder", data_dir=str(tmp_path), image_size=32, resize_size=32)
    x, _ = ds.load("test")[0]
    assert x.shape == (3, 32, 32) and x[:, :, 4:28].min() > 0.95


def test_default_sizes_and_inception_size(reg):
    ds = reg.dataset("imagenet-folder")
    assert ds.config.image_size == 224 and ds.config.effective_resize == 256
    assert reg.dataset("imagenet-folder", image_size=299).config.effective_resize == 342
    with pytest.raises(advx.ConfigError, match="resize_size 100 is smaller than image_size 224"):
        reg.dataset("imagenet-folder", resize_size=100)


def test_explicit_class_list_fixes_label_indices(reg, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    _write_folder(tmp_path, Image, {"val": {"n05": [(8, 8)], "n07": [(8, 8)]}})
    ds = reg.dataset("imagenet-folder", data_dir=str(tmp_path), image_size=8, classes=["n01", "n05", "n06", "n07"])
    assert ds.info().num_classes == 4
    assert ds.load("test").targets == [1, 3]
    other = reg.dataset("imagenet-folder", data_dir=str(tmp_path), image_size=8, classes=["n01", "n05"])
    with pytest.raises(advx.DataError, match=r"class folders not in config 'classes': n07"):
        other.load("test")


def test_nested_data_dir_and_env(reg, tmp_path, monkeypatch):
    Image = pytest.importorskip("PIL.Image")
    _write_folder(tmp_path / "imagenet-folder", Image, {"val": {"a": [(8, 8)], "b": [(8, 8)]}})
    assert len(reg.dataset("imagenet-folder", data_dir=str(tmp_path), image_size=8).load("test")) == 2
    monkeypatch.setenv("ADVX_DATA", str(tmp_path))
    assert len(reg.dataset("imagenet-folder", image_size=8).load("test")) == 2


def test_train_dir_and_test_dir_name_the_split_folders(reg, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    _write_folder(tmp_path, Image, {"training": {"a": [(8, 8)] * 3, "b": [(8, 8)]}, "testing": {"a": [(8, 8)], "b": [(8, 8)] * 2}})
    ds = reg.dataset("imagenet-folder", data_dir=str(tmp_path), image_size=8, train_dir="training", test_dir="testing")
    assert advx.take(ds.load("train"), 10)[1].tolist() == [0, 0, 0, 1]
    assert advx.take(ds.load("test"), 10)[1].tolist() == [0, 1, 1]
    with pytest.raises(advx.DataError, match="val"):
        reg.dataset("imagenet-folder", data_dir=str(tmp_path), image_size=8).load("test")


def test_missing_folder_and_split(reg, tmp_path, isolated):
    pytest.importorskip("PIL.Image")
    with pytest.raises(advx.DataError) as ei:
        reg.dataset("imagenet-folder").load("test")
    msg = str(ei.value)
    assert "\n" not in msg and str(isolated / "imagenet-folder") in msg and "val/<class>/<image>" in msg
    (tmp_path / "val" / "a").mkdir(parents=True)
    (tmp_path / "val" / "b").mkdir(parents=True)
    ds = reg.dataset("imagenet-folder", data_dir=str(tmp_path))
    with pytest.raises(advx.DataError, match=r"no train/ folder for the train split"):
        ds.load("train")
    with pytest.raises(advx.DataError, match=r"val: no images"):
        ds.load("test")


def test_corrupt_image_names_the_file(reg, tmp_path):
    pytest.importorskip("PIL.Image")
    for c in ("a", "b"):
        (tmp_path / "val" / c).mkdir(parents=True)
        (tmp_path / "val" / c / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    ds = reg.dataset("imagenet-folder", data_dir=str(tmp_path)).load("test")
    with pytest.raises(advx.DataError, match=r"broken.jpg: cannot decode image") as ei:
        ds[0]
    assert "\n" not in str(ei.value)


def test_without_pillow_one_line_install_hint(reg, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("No module named 'PIL'")
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m == "PIL" or m.startswith("PIL.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_pil)
    (tmp_path / "val" / "a").mkdir(parents=True)
    (tmp_path / "val" / "b").mkdir(parents=True)
    ds = reg.dataset("imagenet-folder", data_dir=str(tmp_path))
    assert ds.info().num_classes == 2  # info needs no Pillow
    with pytest.raises(advx.DataError, match=r"^dataset 'imagenet-folder' needs Pillow to decode images: pip install pillow$"):
        ds.load("test")
