"""``imagenet-folder``: a local ImageNet-style class folder, read lazily.

Layout (decided here, the torchvision ``ImageFolder`` convention)::

    <root>/train/<class>/<image>     training split  (folder name: config train_dir)
    <root>/val/<class>/<image>       test split      (folder name: config test_dir)

``<root>`` is ``data_dir`` (or ``data_dir/imagenet-folder``), else
``$ADVX_DATA/imagenet-folder``, else ``~/.cache/advx/data/imagenet-folder``. Nothing is
downloaded: ImageNet is not redistributable. Only the split asked for must exist, so an
evaluation-only folder needs just ``val/``.

Classes are the sorted union of the class folder names of both splits (sorted WordNet ids
give the standard 1000-class index order of pretrained models); to evaluate a pretrained
model on a folder that holds only some classes, list all class names in ``classes`` so
that each label is the model's index. Images are decoded on access (the dataset is never
held in memory), converted to RGB, resized so the shorter side is ``resize_size`` and
center-cropped to ``image_size`` (224 for most models, 299 for Inception), as float
tensors (3, H, W) in [0, 1]. Needs Pillow; without it, loading fails with a one-line
``DataError`` (discovery and ``info()`` don't need it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from advx import DataError, Dataset, DatasetConfig, DatasetInfo, hookimpl

from ._files import one_line, search_dirs

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pil():
    """Pillow's ``Image`` module, or a one-line ``DataError`` saying how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError("dataset 'imagenet-folder' needs Pillow to decode images: pip install pillow") from None
    return Image


def load_image(path: Path, resize_size: int, image_size: int) -> np.ndarray:
    """One image as float32 (3, image_size, image_size) in [0, 1]: RGB, resize shorter side, center crop."""
    Image = _pil()
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = resize_size / min(w, h)
            nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
            im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - image_size) // 2, (nh - image_size) // 2
            im = im.crop((left, top, left + image_size, top + image_size))
            arr = np.asarray(im, dtype=np.float32)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot decode image ({one_line(exc)})") from None
    return arr.transpose(2, 0, 1) / 255.0


class ImageFolderData(torch.utils.data.Dataset):
    """``(x, y)`` pairs of an image folder, decoded on access.

    ``samples`` is the list of ``(path, label)``, ``targets`` the labels alone (so that
    ``advx.dataset_labels`` and class ratios never decode an image). Picklable, so it works
    with ``DataLoader`` workers.
    """

    def __init__(self, samples: list[tuple[Path, int]], resize_size: int, image_size: int) -> None:
        self.samples = samples
        self.targets = [y for _, y in samples]
        self.resize_size = resize_size
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, y = self.samples[i]
        return torch.from_numpy(load_image(path, self.resize_size, self.image_size)), y


class ImagenetFolder(Dataset):
    """A local ImageNet-style folder (root/{train,val}/<class>/<image>), center-cropped, lazy."""

    name: ClassVar[str] = "imagenet-folder"

    class Config(DatasetConfig):
        data_dir: str | None = Field(
            None,
            json_schema_extra={"identity": False},  # where the files are, not which data (the fingerprint says that)
            description=(
                "folder holding train/ and/or val/ (searched directly and in <data_dir>/imagenet-folder/); "
                "default: $ADVX_DATA/imagenet-folder, else ~/.cache/advx/data/imagenet-folder"
            ),
        )
        train_dir: str = Field("train", description="subfolder of the training split")
        test_dir: str = Field("val", description="subfolder of the test split")
        image_size: int = Field(224, ge=8, le=1024, description="side of the center crop (224; 299 for Inception)")
        resize_size: int | None = Field(
            None,
            ge=8,
            description="shorter side after resizing, before the crop; default image_size / 0.875 (256 for 224)",
        )
        classes: list[str] | None = Field(
            None,
            description=(
                "class folder names in label order (e.g. all 1000 WordNet ids, so labels match a pretrained "
                "model); default: the sorted class folders found"
            ),
        )

        @field_validator("classes")
        @classmethod
        def _check_classes(cls, v: list[str] | None) -> list[str] | None:
            if v is not None:
                if len(v) < 2:
                    raise ValueError("at least two classes are needed")
                if len(set(v)) != len(v):
                    raise ValueError("class names must be unique")
            return v

        @model_validator(mode="after")
        def _check_sizes(self):
            if self.resize_size is not None and self.resize_size < self.image_size:
                raise ValueError(f"resize_size {self.resize_size} is smaller than image_size {self.image_size}")
            return self

        @property
        def effective_resize(self) -> int:
            return self.resize_size if self.resize_size is not None else round(self.image_size / 0.875)

    # -- locating ---------------------------------------------------------------------------

    def _split_dir_name(self, split: str) -> str:
        if split == "train":
            return self.config.train_dir
        if split == "test":
            return self.config.test_dir
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

    def root(self) -> Path:
        """The first searched folder holding a train or test subfolder."""
        dirs = search_dirs(self.name, self.config.data_dir)
        subs = (self.config.train_dir, self.config.test_dir)
        for d in dirs:
            if any((d / s).is_dir() for s in subs):
                return d
        raise DataError(
            f"dataset 'imagenet-folder': no {subs[0]}/ or {subs[1]}/ class folder in "
            f"{', '.join(str(d) for d in dirs)}; expected <root>/{subs[1]}/<class>/<image>, set data_dir or "
            f"ADVX_DATA (ImageNet is not downloaded automatically)"
        )

    def _class_folders(self, split_dir: Path) -> list[str]:
        if not split_dir.is_dir():
            return []
        return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def class_names(self) -> list[str]:
        """The class names in label order (config ``classes``, else sorted folders of both splits)."""
        if self.config.classes is not None:
            return list(self.config.classes)
        root = self.root()
        found = set(self._class_folders(root / self.config.train_dir))
        found |= set(self._class_folders(root / self.config.test_dir))
        if len(found) < 2:
            raise DataError(f"{root}: found {len(found)} class folder(s), need at least 2")
        return sorted(found)

    def info(self) -> DatasetInfo:
        names = self.class_names()
        size = self.config.image_size
        return DatasetInfo(
            name=self.name,
            input_shape=(3, size, size),
            num_classes=len(names),
            bounds=(0.0, 1.0),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            class_names=tuple(names),
        )

    def samples(self, split: str) -> list[tuple[Path, int]]:
        """Sorted ``(path, label)`` of every image of ``split`` (a directory listing, no decoding)."""
        sub = self._split_dir_name(split)
        root = self.root()
        split_dir = root / sub
        if not split_dir.is_dir():
            raise DataError(f"{root}: no {sub}/ folder for the {split} split; expected {root}/{sub}/<class>/<image>")
        names = self.class_names()
        index = {n: i for i, n in enumerate(names)}
        unknown = [c for c in self._class_folders(split_dir) if c not in index]
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise DataError(f"{split_dir}: class folders not in config 'classes': {shown}")
        out: list[tuple[Path, int]] = []
        for c in self._class_folders(split_dir):
            for p in sorted((split_dir / c).rglob("*")):
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                    out.append((p, index[c]))
        if not out:
            raise DataError(f"{split_dir}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in its class folders")
        return out

    def fingerprint(self, split="train") -> str:
        """A hash of the ``split`` folder's file list with sizes and modification times.

        Hashing every image would cost a full read of the folder; a changed, added or
        removed file changes its size, time or the list, and so the training key.
        """
        root = self.root()
        h = hashlib.sha256()
        for path, label in self.samples(split):
            st = path.stat()
            h.update(f"{path.relative_to(root)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def load(self, split):
        _pil()  # fail now, with the install hint, rather than at the first batch
        c = self.config
        return ImageFolderData(self.samples(split), c.effective_resize, c.image_size)


@hookimpl
def advx_register_datasets():
    return [ImagenetFolder]
