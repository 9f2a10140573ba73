"""``Model.pretrained``: a model that arrives trained is evaluated as built, never trained over.

The kernel trains every other model plugin with its ``train`` table; a pretrained one is
built (its weights read) and evaluated as it is, its build recorded as loaded; ``gray-box``,
whose copy would be the same weights, fails such cells with a line saying so; a dry run
lists it as loaded.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

import advx
from advx import Model, ModelConfig


class Fixed(Model):
    """A linear digits model with fixed, seeded weights: 'trained' when built."""

    name: ClassVar[str] = "fixed-linear"

    class Config(ModelConfig):
        arrives_trained: bool = Field(True, description="what Model.pretrained says")

    @property
    def pretrained(self) -> bool:
        return self.config.arrives_trained

    def build(self, info):
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, info.num_classes))
        with torch.no_grad():
            gen = torch.Generator().manual_seed(7)
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        return net


def _registry() -> advx.Registry:
    reg = advx.Registry.discover()
    reg.add("model", Fixed, package="tests")
    return reg


def _spec(tmp_path, arrives_trained: bool, threats=None) -> dict:
    return {
        "matrix": {"name": "pretrained", "samples": 50, "batch_size": 50, "cache_dir": str(tmp_path / "c")},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "fixed-linear", "normalize": False, "arrives_trained": arrives_trained, "train": {"epochs": 3, "lr": 0.05}}],
        "threats": threats or [{"name": "white-box"}],
        "attacks": [{"name": "fgsm", "eps": 0.1}],
    }


def test_base_class_default_is_not_pretrained(registry):
    assert registry.model("mlp").pretrained is False


def test_a_pretrained_model_is_evaluated_as_built_and_not_trained(tmp_path, digits):
    reg = _registry()
    _, info, x, y = digits
    built = Fixed().build(info).eval()
    with torch.no_grad():
        expected = float((built(x[:50]).argmax(1) == y[:50]).float().mean())

    res = advx.run_matrix(_spec(tmp_path, True), registry=reg)
    assert res.done == 1
    assert res.rows[0]["clean_accuracy"] == expected  # the built weights, untouched by 3 epochs
    assert [(t["cached"], "loaded, not trained" in t["description"]) for t in res.trainings] == [(True, True)]
    assert not (tmp_path / "c" / "models").exists()  # nothing trained, nothing cached

    trained = advx.run_matrix(_spec(tmp_path, False), registry=reg)  # the same plugin, not pretrained
    assert [t["cached"] for t in trained.trainings] == [False]
    assert trained.rows[0]["clean_accuracy"] > expected + 0.3  # 3 epochs change random weights


def test_gray_box_on_a_pretrained_model_fails_with_one_line(tmp_path):
    res = advx.run_matrix(_spec(tmp_path, True, threats=[{"name": "gray-box"}]), registry=_registry())
    (row,) = res.rows
    assert row["status"] == "failed"
    assert "gray-box" in row["error"] and "no copy trained with another seed" in row["error"] and "\n" not in row["error"]


def test_dry_run_lists_a_pretrained_model_as_loaded(tmp_path):
    from advx.engine.run import dry_run

    plan = dry_run(_spec(tmp_path, True), registry=_registry())
    assert plan.trainings == [("fixed-linear(normalize=False, arrives_trained=True) on digits (loaded, not trained)", True)]
