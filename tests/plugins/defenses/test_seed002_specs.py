"""The seed-002 experiment specs: every full spec has a quick variant that extends it, and the quick
variants run end to end on real MNIST (1% of the training set, 1 epoch, 100 test images)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import advx

EXPERIMENTS = Path(__file__).resolve().parents[3] / "experiments"
STUDIES = [
    "seed002-mnist-table2", "seed002-mnist-table4", "seed002-mnist-relu-logits", "seed002-mnist-distillation-cw",
    "seed002-cifar10-table2", "seed002-mnist-madry", "seed002-mnist-single",
]


def quick_pairs() -> list[tuple[Path, Path]]:
    """(full spec, its quick variant) of every seed-002 study: ``quick.toml`` goes with
    ``full.toml``, ``X-quick.toml`` with ``X.toml``."""
    pairs = []
    for study in STUDIES:
        for quick in sorted((EXPERIMENTS / study).glob("*quick.toml")):
            stem = quick.stem.removesuffix("quick").removesuffix("-") or "full"
            pairs.append((quick.with_name(f"{stem}.toml"), quick))
    return pairs


def test_each_seed002_defense_spec_has_a_quick_variant_with_the_same_axes(registry):
    pairs = quick_pairs()
    assert len(pairs) == 12 and all(full.is_file() for full, _ in pairs), pairs
    for full_path, quick_path in pairs:
        full = advx.plan(advx.MatrixSpec.from_toml(full_path), registry, locate_data=False)
        quick = advx.plan(advx.MatrixSpec.from_toml(quick_path), registry, locate_data=False)
        assert len(full) == len(quick), quick_path
        assert [c.attack.name for c in full] == [c.attack.name for c in quick]
        assert [c.threat.key() for c in full] == [c.threat.key() for c in quick]
        assert "extends" in tomllib.loads(quick_path.read_text()), f"{quick_path} copies its full spec instead of extending it"


@pytest.mark.slow
@pytest.mark.parametrize("study", ["seed002-mnist-table2", "seed002-mnist-table4"])
def test_quick_variant_runs_end_to_end(registry, shared_data, tmp_path, monkeypatch, study):
    import torch

    monkeypatch.setenv("ADVX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ADVX_DATA", str(shared_data))  # the specs name no data folder, as for users
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = advx.run_matrix(EXPERIMENTS / study / "quick.toml", registry=registry, store=tmp_path / "quick.db")
    finally:
        torch.set_num_threads(threads)
    assert res.failed == 0, [r.get("error") for r in res.rows if r.get("status") == "failed"]
    done = [r for r in res.rows if r["status"] == "done"]
    assert done and all(r["clean_accuracy"] > 0.1 for r in done)  # 1 epoch on 600 images: above chance
    bagging = [r for r in done if "kind=bagging" in r["defense"] and "member_defense" not in r["defense"]]
    assert bagging and all(r["clean_accuracy"] > 0.5 for r in bagging)
    threats = {r["threat"] for r in done if r["defense"].startswith("ensemble")}
    assert {"white-box", "member-mean"} <= threats
