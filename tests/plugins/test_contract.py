"""One contract over every registered plugin (foolbox's table of attack targets, generalised).

Whatever a plugin's package, it must: validate its config, and behave as its interface
promises (attacks: shape, device, budget, bounds, input untouched, gradients used; models:
logits of the right shape with input gradients; datasets: examples in their declared
bounds; defenses: a usable model from a real ``DefenseContext``; threat models: a view the
attack can craft on). Every registered plugin runs for real: nothing is skipped for a
config or data error (a broken config must fail here, not read as skipped); the only skips
are optional packages that are not installed (torchvision, timm), named as such.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import advx
from advx.testing import check_attack

REG = advx.Registry.discover()
#: models that need an optional package, and the package
OPTIONAL_PACKAGE = {"vgg19": "torchvision", "inception-v3": "torchvision", "timm": "timm"}


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


#: small settings per built-in plugin so that each runs in a second on digits (a plugin not
#: listed runs with its defaults); ``test_small_settings_name_registered_plugins`` keeps it honest
SMALL_MODELS = {"wide-resnet": {"depth": 10, "widen_factor": 1}}  # the full WRN-34-8 is tested in its own file
SMALL_DEFENSES = {
    "ensemble": {"members": 2},
    "adversarial-training": {"attack": {"name": "fgsm", "eps": 0.1}},
    "i-defender": {"n_components": 1, "max_iter": 20},
    "feature-squeezing": {"calibration_samples": 100},
}


def test_small_settings_name_registered_plugins():
    assert set(SMALL_MODELS) <= set(REG.names("model"))
    assert set(SMALL_DEFENSES) <= set(REG.names("defense"))


@pytest.mark.parametrize("name", REG.names("model"))
def test_model_contract(name, tmp_path):
    if name in OPTIONAL_PACKAGE:
        pytest.importorskip(OPTIONAL_PACKAGE[name], reason=f"model {name!r} needs the optional package {OPTIONAL_PACKAGE[name]}")
    shape, classes, params = (1, 28, 28), 10, dict(SMALL_MODELS.get(name, {}))
    if name == "python":  # the user's own network, from a factory in installed code
        params = {"factory": "advx.testing:TinyNet", "pretrained": False}
    if name == "file":  # the user's own network, saved as TorchScript
        from advx.testing import TinyNet

        torch.jit.script(TinyNet().eval()).save(str(tmp_path / "net.pt"))
        params = {"path": str(tmp_path / "net.pt")}
    if OPTIONAL_PACKAGE.get(name) == "torchvision":  # ImageNet architectures from a weights file the user has
        tv = pytest.importorskip("torchvision")
        side = 299 if name == "inception-v3" else 224
        shape, classes = (3, side, side), 1000
        ctor = tv.models.inception_v3(weights=None, aux_logits=True, init_weights=False) if side == 299 else tv.models.vgg19(weights=None)
        weights = tmp_path / f"{name}.pt"
        torch.save(ctor.state_dict(), weights)
        params["weights"] = str(weights)
    info = advx.DatasetInfo(name="t", input_shape=shape, num_classes=classes)
    model = REG.create("model", name, params)
    net = advx.build_model(model, info).eval()
    x = torch.rand(2, *shape, requires_grad=True)
    out = advx.check_model(net, x.detach(), classes)  # logits (not probabilities) of the right shape, finite, eval mode
    assert out.shape == (2, classes)
    (g,) = torch.autograd.grad(net(x).sum(), x)
    assert g.abs().sum() > 0  # attacks need input gradients


def _fake_files(name: str, root: Path) -> dict:
    """A small copy of the files dataset ``name`` reads, written under ``root`` (None: it needs none)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("advx_ds_formats", Path(__file__).with_name("datasets") / "ds_formats.py")
    fmt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fmt)
    if name in ("mnist", "fashion-mnist"):
        fmt.write_mnist_dir(root / name, n_train=30, n_test=20)
        return {"data_dir": str(root / name), "download": False}
    if name == "cifar-10":
        fmt.write_cifar_batch(root / name / "data_batch_1", n=12)
        fmt.write_cifar_batch(root / name / "test_batch", n=12, seed=1)
        return {"data_dir": str(root / name), "download": False, "train_batches": [1]}
    if name == "imagenet-folder":
        Image = pytest.importorskip("PIL.Image", reason="imagenet-folder reads images with the optional package pillow")
        import numpy as np

        for split in ("train", "val"):
            for cls in ("a", "b"):
                d = root / name / split / cls
                d.mkdir(parents=True)
                Image.fromarray(np.full((12, 12, 3), 40 if cls == "a" else 200, dtype=np.uint8)).save(d / "x.png")
        return {"data_dir": str(root / name), "image_size": 8}
    return {}


@pytest.mark.parametrize("name", REG.names("dataset"))
def test_dataset_contract(name, tmp_path, monkeypatch):
    monkeypatch.setenv("ADVX_DATA", str(tmp_path / "nothing-here"))  # never the user's data, never the network
    ds = REG.create("dataset", name, _fake_files(name, tmp_path))
    info = ds.info()
    test = ds.load("test")
    x, y = advx.take(test, 16)
    assert tuple(x.shape[1:]) == tuple(info.input_shape)
    lo, hi = info.bounds
    assert float(x.min()) >= lo and float(x.max()) <= hi
    assert int(y.min()) >= 0 and int(y.max()) < info.num_classes
    assert ds.test_size() == len(test)
    assert ds.identity()[0] == name  # what identifies the data a cell evaluates


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small mlp trained one epoch on digits, and the context defenses get."""
    cache = tmp_path_factory.mktemp("contract-cache")
    ctx = advx.DefenseContext(
        dataset=REG.dataset("digits"),
        model=REG.create("model", "mlp", {"hidden": [32]}),
        train_config=advx.TrainConfig(epochs=1),
        device=torch.device("cpu"),
        registry=REG,
        cache_dir=str(cache),
    )
    return ctx.train().eval(), ctx


@pytest.mark.parametrize("name", REG.names("defense"))
def test_defense_contract(name, trained, digits):
    """Every defense applied for real, through the context the kernel gives it, returns a
    module the kernel can evaluate: eval mode, logits of the right shape, finite."""
    base, ctx = trained
    _, info, x, _ = digits
    out = REG.create("defense", name, SMALL_DEFENSES.get(name, {})).apply(base, ctx)
    assert isinstance(out, torch.nn.Module)
    out = out.eval()
    logits = advx.check_model(out, x[:8], info.num_classes)
    assert logits.shape == (8, info.num_classes)


@pytest.mark.parametrize("name", REG.names("threat"))
def test_threat_model_contract(name):
    """Every threat model validates its default config (or says which field it needs), has a
    key and a label, and declares its traits as booleans."""
    cls = REG.get("threat", name)
    traits = cls.traits()
    assert set(traits) == {"less_knowledge", "surrogate"} and all(isinstance(v, bool) for v in traits.values())
    required = [k for k, f in cls.Config.model_fields.items() if f.is_required()]
    if required:
        with pytest.raises(advx.ConfigError, match=required[0]):
            cls.validate_config({})
        return
    t = cls(cls.validate_config({}))
    assert t.label().startswith(name) and t.key()[0] == name
