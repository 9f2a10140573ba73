"""What a training key holds: changed training data trains again; a file dataset is identified by its files' checksums."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import advx
from advx.cli import main


def test_changed_training_data_changes_the_training_key(tmp_path, registry):
    from advx.runtime.training import training_key

    root = tmp_path / "folder"  # the fingerprint lists files; it never decodes them
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            (root / split / c / "0.png").write_bytes(b"not decoded")
    ds = registry.dataset("imagenet-folder", data_dir=str(root), image_size=8, resize_size=8)
    model = registry.model("mlp")
    cfg = advx.TrainConfig()
    k1 = training_key(ds, model, cfg, "cpu")
    assert training_key(ds, model, cfg, "cpu") == k1
    (root / "train" / "a" / "1.png").write_bytes(b"a new image")
    k2 = training_key(ds, model, cfg, "cpu")
    assert k2 != k1
    os.utime(root / "train" / "a" / "0.png", ns=(1, 1))  # a changed file
    assert training_key(ds, model, cfg, "cpu") not in (k1, k2)


def test_file_dataset_fingerprint_is_the_files_checksums(shared_data, registry):
    ds = registry.dataset("mnist", data_dir=str(shared_data / "mnist"))
    fp = ds.fingerprint()
    assert len(fp) == 2 and all(len(h) == 32 for h in fp)
