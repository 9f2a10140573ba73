"""One contract over every registered plugin (foolbox's table of attack targets, generalised).

Whatever a plugin's package, it must: validate its default config, and behave as its
interface promises (attacks: shape, device, budget, bounds, input untouched, gradients
used; models: logits of the right shape; datasets: examples in their declared bounds).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import advx
from advx.testing import check_attack

REG = advx.Registry.discover()
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_no_builtin_plugin_failed_to_load():
    assert [str(f) for f in REG.failures if f.package == "advx"] == []


@pytest.mark.parametrize("name", REG.names("attack"))
def test_attack_contract(name, digits_cnn, digits):
    cls = REG.get("attack", name)
    _, info, x, y = digits
    params = {}
    if "steps" in cls.Config.model_fields:
        params["steps"] = min(5, cls.Config.model_fields["steps"].default or 5)
    out = check_attack(cls, params, model=digits_cnn, x=x[:16], y=y[:16], bounds=info.bounds)
    assert out.shape == x[:16].shape


@pytest.mark.parametrize("name", REG.names("model"))
def test_model_contract(name):
    cls = REG.get("model", name)
    info = advx.DatasetInfo(name="t", input_shape=(1, 28, 28), num_classes=10, mean=(0.13,), std=(0.31,))
    small = {"wide-resnet": {"depth": 10, "widen_factor": 1}}  # the full WRN-34-8 is tested in its own file
    try:
        model = REG.create("model", name, small.get(name, {}))
        net = advx.build_model(model, info)
    except advx.ConfigError as exc:  # e.g. weights file or torchvision needed
        pytest.skip(f"{name}: {exc}")
    net.eval()
    x = torch.rand(3, 1, 28, 28, requires_grad=True)
    out = net(x)
    assert out.shape == (3, 10)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert g.abs().sum() > 0
    assert cls.Config.model_fields["normalize"].default in (True, False)


@pytest.mark.parametrize("name", REG.names("dataset"))
def test_dataset_contract(name, monkeypatch):
    fields = REG.get("dataset", name).Config.model_fields
    params = {"download": False} if "download" in fields else {}  # tests never touch the network
    if SHARED_DATA.is_dir():
        monkeypatch.setenv("ADVX_DATA", str(SHARED_DATA))
    if "train_batches" in fields:
        params["train_batches"] = [1, 2]  # the offline CIFAR-10 copy has two training batches
    try:
        ds = REG.create("dataset", name, params)
        info = ds.info()
        test = ds.load("test")
    except advx.DataError as exc:  # needs files not present here
        pytest.skip(f"{name}: {exc}")
    x, y = advx.take(test, 16)
    assert tuple(x.shape[1:]) == tuple(info.input_shape)
    lo, hi = info.bounds
    assert float(x.min()) >= lo and float(x.max()) <= hi
    assert int(y.min()) >= 0 and int(y.max()) < info.num_classes


@pytest.mark.parametrize("name", REG.names("defense"))
def test_defense_contract(name, digits_cnn):
    if name != "none":
        pytest.skip("defenses that train are exercised by their own tests")
    out = REG.create("defense", name, {}).apply(digits_cnn, None)
    assert isinstance(out, torch.nn.Module)
