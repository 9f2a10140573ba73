"""Configs and specs: validation errors are one line naming the plugin and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

import advx
from advx.engine.spec import MatrixSpec, sweep

ISSUE_SPEC = (Path(__file__).resolve().parents[3] / "experiments" / "digits-demo" / "full.toml").read_text()


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


def test_plugin_config_bounds(registry):
    with pytest.raises(advx.ConfigError) as exc:
        registry.attack("fgsm", eps=-0.1)
    msg = one_line(exc)
    assert 'attack "fgsm"' in msg and "eps" in msg and "greater than 0" in msg


def test_unknown_config_key_names_it(registry):
    with pytest.raises(advx.ConfigError) as exc:
        registry.attack("bim", epsilon=0.1)
    assert "epsilon: unknown field" in one_line(exc)


def test_label_mode_validated(registry):
    assert registry.attack("fgsm", label_mode="target=3").config.targeted
    assert not registry.attack("fgsm", label_mode="predicted").config.targeted
    with pytest.raises(advx.ConfigError) as exc:
        registry.attack("fgsm", label_mode="target=x")
    assert "label_mode" in one_line(exc)


def test_issue_spec_plans_four_cells(registry):
    spec = MatrixSpec.from_toml_string(ISSUE_SPEC)
    cells = advx.plan(spec, registry)
    assert [c.attack.describe() for c in cells] == [
        "fgsm(eps=0.1)",
        "fgsm(eps=0.2)",
        "fgsm(eps=0.3)",
        "bim(eps=0.2, alpha=0.025, steps=8)",
    ]
    assert len({c.key for c in cells}) == 4
    assert cells[0].model.train.epochs == 5


def test_spec_errors_name_table_plugin_and_field(registry):
    bad = ISSUE_SPEC.replace("alpha = 0.025", "alpha = -1")
    with pytest.raises(advx.ConfigError) as exc:
        advx.plan(MatrixSpec.from_toml_string(bad), registry)
    assert one_line(exc).startswith('attacks[1] "bim": alpha: Input should be greater than 0')

    bad = ISSUE_SPEC.replace('name = "bim"', 'name = "bmi"')
    with pytest.raises(advx.PluginNotFoundError) as exc:
        advx.plan(MatrixSpec.from_toml_string(bad), registry)
    assert "did you mean 'bim'" in one_line(exc)

    bad = ISSUE_SPEC.replace("train = { epochs = 5 }", "train = { epochs = -5 }")
    with pytest.raises(advx.ConfigError) as exc:
        advx.plan(MatrixSpec.from_toml_string(bad), registry)
    assert 'models[0] "mnist-cnn" train: epochs' in one_line(exc)


def test_matrix_table_errors():
    with pytest.raises(advx.ConfigError) as exc:
        MatrixSpec.from_toml_string(ISSUE_SPEC.replace('device = "cpu"', 'device = "gpu"'))
    assert "matrix.device" in one_line(exc)
    with pytest.raises(advx.ConfigError) as exc:
        MatrixSpec.from_toml_string(ISSUE_SPEC.replace("samples = 500", "sampels = 500"))
    assert "matrix.sampels: unknown field" in one_line(exc)
    with pytest.raises(advx.ConfigError) as exc:
        MatrixSpec.from_toml_string("[matrix\nname=1")
    assert "invalid TOML" in one_line(exc)
    with pytest.raises(advx.ConfigError) as exc:
        MatrixSpec.from_toml("/nonexistent/spec.toml")
    assert "does not exist" in one_line(exc)


def test_sweep_expands_lists_but_not_list_typed_fields(registry):
    cls = registry.get("attack", "bim")
    assert len(sweep({"eps": [0.1, 0.2], "steps": [4, 8, 16]}, cls.Config)) == 6
    mlp = registry.get("model", "mlp")
    assert sweep({"hidden": [200, 200]}, mlp.Config) == [{"hidden": [200, 200]}]
    assert len(sweep({"hidden": [[100], [200, 200]]}, mlp.Config)) == 2


def test_spec_built_in_python(registry):
    spec = MatrixSpec(
        matrix={"samples": 10},
        datasets=[{"name": "synthetic"}],
        models=[{"name": "mlp", "train": {"epochs": 1}}],
        attacks=[{"name": "fgsm", "eps": [0.1, 0.2]}],
    )
    cells = advx.plan(spec, registry)
    assert len(cells) == 2 and cells[0].defense.name == "none" and cells[0].threat.name == "white-box"


def test_dataset_class_ratio_bounds(registry):
    with pytest.raises(advx.ConfigError) as exc:
        registry.dataset("digits", class_ratios={0: 1.5})
    assert "class_ratios" in one_line(exc)


def test_class_ratio_of_a_missing_class(registry):
    ds = registry.dataset("digits", class_ratios={12: 0.5})
    with pytest.raises(advx.ConfigError) as exc:
        advx.load_split(ds, "train")
    assert "class_ratios: no class 12" in one_line(exc)


def test_class_ratio_rounds_half_up(registry):
    import torch

    from advx.runtime.data import apply_class_ratios

    ds = advx.as_tensor_dataset(torch.zeros(5, 1), torch.zeros(5))
    cfg = registry.get("dataset", "digits").Config(class_ratios={0: 0.5})
    assert len(apply_class_ratios(ds, cfg)) == 3


def test_models_that_differ_only_in_training_read_apart(registry):
    """A spread over training seeds: the cells' labels name the differing training values
    (``advx results`` and the reproductions select cells by label); a lone model, or models
    that already read apart, keep their plain description."""
    spec = MatrixSpec(
        matrix={"samples": 10},
        datasets=[{"name": "synthetic"}],
        models=[
            {"name": "mlp", "train": {"epochs": 1, "seed": 100}},
            {"name": "mlp", "train": {"epochs": 1, "seed": 200}},
            {"name": "mlp", "hidden": [16], "train": {"epochs": 2}},
        ],
        attacks=[{"name": "fgsm"}],
    )
    cells = advx.plan(spec, registry)
    assert [c.model.describe() for c in cells] == ["mlp(train.seed=100)", "mlp(train.seed=200)", "mlp(hidden=[16])"]
    assert len({c.key for c in cells}) == 3 and len({c.title() for c in cells}) == 3
    plain = MatrixSpec(matrix={"samples": 10}, datasets=[{"name": "synthetic"}], models=[{"name": "mlp", "train": {"seed": 3}}],
                       attacks=[{"name": "fgsm"}])
    assert advx.plan(plain, registry)[0].model.describe() == "mlp"
