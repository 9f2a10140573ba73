"""The contract every registered model plugin keeps, checked on each one.

Parametrized over ``advx.Registry.discover()``, so a newly registered model is checked
without editing this file. A model that needs resources a test cannot provide (the
torchvision models need a weights file and ImageNet-sized inputs) is covered by its own
test module instead and skipped here.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import advx

REGISTRY = advx.Registry.discover()
NEEDS_WEIGHTS = {"vgg19", "inception-v3"}  # tested in test_models_torchvision.py
LOADED = {"python", "file", "timm"}  # the user's own network: tested in test_models_loaded.py
MODELS = [n for n in REGISTRY.names("model") if n not in NEEDS_WEIGHTS | LOADED]
# Small configs where the default is too big for a fast test; the default is checked in
# test_models_architectures.py without a forward pass.
SMALL = {"wide-resnet": {"depth": 10, "widen_factor": 2, "dropout": 0.3}}

SHAPES = {
    "mnist": ((1, 28, 28), 10, (0.1307,), (0.3081,)),
    "cifar": ((3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "digits": ((1, 8, 8), 10, (0.3051,), (0.3820,)),
    "mnist-3-classes": ((1, 28, 28), 3, None, None),  # no stats: no Normalize layer
}
BUILT_IN = {"mnist-cnn", "mlp", "cifar-cnn", "lenet5", "conv-f", "wide-resnet"}
MODELS_DIR = Path(advx.__file__).resolve().parents[1] / "plugins" / "models"


def make_info(shape_key: str) -> advx.DatasetInfo:
    shape, classes, mean, std = SHAPES[shape_key]
    return advx.DatasetInfo(name=shape_key, input_shape=shape, num_classes=classes, mean=mean, std=std)


def build(name: str, shape_key: str, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    model = REGISTRY.model(name, **{**SMALL.get(name, {}), **overrides})
    return advx.build_model(model, make_info(shape_key))


def test_every_catalog_model_is_registered():
    names = set(REGISTRY.names("model"))
    assert BUILT_IN | NEEDS_WEIGHTS | LOADED <= names
    assert not [f for f in REGISTRY.failures if f.entry_point.startswith("models-")]


@pytest.mark.parametrize("name", MODELS)
def test_config_fields_are_described(name):
    cls = REGISTRY.get("model", name)
    assert issubclass(cls.Config, advx.ModelConfig)
    for field, info in cls.Config.model_fields.items():
        assert info.description, f"{name}.{field} has no description"


@pytest.mark.parametrize("shape_key", list(SHAPES))
@pytest.mark.parametrize("name", MODELS)
def test_logits_gradients_and_hidden_states(name, shape_key):
    net = build(name, shape_key).eval()
    shape, classes, _, _ = SHAPES[shape_key]
    assert isinstance(net, advx.Classifier) or isinstance(getattr(net, "net", None), advx.Classifier)
    assert not any(isinstance(m, (nn.Softmax, nn.LogSoftmax)) for m in net.modules()), "must return logits"

    x = torch.rand(5, *shape, requires_grad=True)
    out = net(x)
    assert out.shape == (5, classes) and out.dtype == torch.float32
    out[:, 0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0

    with torch.no_grad():
        states = net.hidden_states(x)
    assert states, "hidden_states must not be empty"
    for key, h in states.items():
        assert isinstance(key, str)
        assert h.dim() == 2 and h.shape[0] == 5 and h.shape[1] > 0, (key, tuple(h.shape))
        assert torch.isfinite(h).all()


@pytest.mark.parametrize("shape_key", ["mnist", "digits"])
@pytest.mark.parametrize("name", MODELS)
def test_last_hidden_state_is_what_the_output_layer_reads(name, shape_key):
    """In eval mode, the output layer applied to the last hidden state gives the logits.

    So the states are post-activation values of the network's own forward pass (what
    I-defender models), in forward order, and not recomputed by a diverging copy.
    """
    net = build(name, shape_key).eval()
    x = torch.rand(4, *SHAPES[shape_key][0])
    with torch.no_grad():
        states = net.hidden_states(x)
        last_linear = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
        torch.testing.assert_close(last_linear(list(states.values())[-1]), net(x), rtol=1e-5, atol=1e-5)
        other = net.hidden_states(torch.rand(4, *SHAPES[shape_key][0]))
    assert any(not torch.equal(states[k], other[k]) for k in states)


@pytest.mark.parametrize("name", MODELS)
def test_init_is_deterministic_under_manual_seed(name):
    s1 = build(name, "cifar", seed=123).state_dict()
    s2 = build(name, "cifar", seed=123).state_dict()
    s3 = build(name, "cifar", seed=124).state_dict()
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert any(not torch.equal(s1[k], s3[k]) for k in s1 if s1[k].is_floating_point())


@pytest.mark.parametrize("name", MODELS)
def test_train_and_eval_modes(name):
    """Eval mode is deterministic and per-example; dropout (when present) acts in train mode only."""
    net = build(name, "cifar")
    x = torch.rand(6, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        full = net(x)
        assert torch.equal(full, net(x))
        # per-example in eval mode: batch statistics (BatchNorm) must not leak across examples
        torch.testing.assert_close(net(x[:1]), full[:1], rtol=1e-4, atol=1e-5)
    dropouts = [m for m in net.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    if dropouts:
        net.train()
        torch.manual_seed(0)
        with torch.no_grad():
            t1, t2 = net(x), net(x)
        assert not torch.equal(t1, t2), "dropout inactive in train mode"
        assert not torch.equal(t1, full)


def test_mnist_cnn_and_cifar_cnn_dropout_rates():
    """The dropout layers the papers specify are present, with their rates."""
    rates = {n: sorted(m.p for m in build(n, "cifar").modules() if isinstance(m, nn.Dropout)) for n in ("mnist-cnn", "cifar-cnn")}
    assert rates == {"mnist-cnn": [0.5], "cifar-cnn": [0.2, 0.3, 0.4, 0.5]}


def test_too_small_input_is_a_clear_config_error():
    info = advx.DatasetInfo(name="tiny", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(advx.ConfigError, match=r'model "conv-f".*11x11.*pad_small'):
        REGISTRY.model("conv-f", pad_small=False).build(info)
    tiny = advx.DatasetInfo(name="tiny", input_shape=(1, 4, 4), num_classes=10)
    with pytest.raises(advx.ConfigError, match=r'model "cifar-cnn".*at least 8x8'):
        REGISTRY.model("cifar-cnn").build(tiny)


@pytest.mark.parametrize("name", ["mnist-cnn", "cifar-cnn", "lenet5", "conv-f", "wide-resnet"])
def test_image_models_reject_flat_inputs(name):
    flat = advx.DatasetInfo(name="tabular", input_shape=(20,), num_classes=2)
    with pytest.raises(advx.ConfigError, match=rf'model "{name}" needs image inputs'):
        REGISTRY.model(name).build(flat)


@pytest.mark.parametrize(
    "name, params, field",
    [
        ("wide-resnet", {"depth": 33}, "depth"),
        ("wide-resnet", {"widen_factor": 0}, "widen_factor"),
        ("wide-resnet", {"dropout": 1.0}, "dropout"),
        ("cifar-cnn", {"block_dropout": (0.2, 1.0, 0.4)}, "block_dropout"),
        ("cifar-cnn", {"filters": 0}, "filters"),
        ("lenet5", {"activation": "sigmoid"}, "activation"),
        ("lenet5", {"pooling": "median"}, "pooling"),
        ("lenet5", {"c3_connections": "sparse"}, "c3_connections"),
        ("conv-f", {"filters": -1}, "filters"),
        ("mnist-cnn", {"dropout": 1.0}, "dropout"),
        ("mlp", {"hidden": ()}, "hidden"),
        ("mnist-cnn", {"filter": 32}, "filter"),  # misspelt: unknown field
    ],
)
def test_invalid_config_names_plugin_and_field(name, params, field):
    with pytest.raises(advx.ConfigError) as exc:
        REGISTRY.model(name, **params)
    msg = str(exc.value)
    assert "\n" not in msg
    assert f'model "{name}"' in msg and f"{field}:" in msg


def test_wide_resnet_depth_error_suggests_valid_depths():
    with pytest.raises(advx.ConfigError, match=r"depth: .*divisible by 6.*28 or 34"):
        REGISTRY.model("wide-resnet", depth=33)


def test_model_modules_import_only_the_public_api():
    """Built-in models are written as a third party would write them: advx's top-level API,
    torch, pydantic, the standard library and their own private modules only (no
    ``advx.<internal>`` imports; optional packages are imported by name when needed)."""
    allowed = {"advx", "torch", "pydantic", "__future__"} | set(sys.stdlib_module_names)
    files = sorted(p for p in MODELS_DIR.glob("*.py") if p.name != "__init__.py")
    assert len(files) >= 7
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and (node.module or "").startswith("_"):
                    continue  # a private module beside the models (``_loaded``), itself checked by this loop
                mods = [node.module or ""]
                assert node.level == 0, f"{path.name}: relative import"
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            for mod in mods:
                assert mod.split(".")[0] in allowed, f"{path.name} imports {mod}"
                assert mod != "advx" or isinstance(node, ast.ImportFrom), f"{path.name}: use 'from advx import ...'"
                assert not mod.startswith("advx."), f"{path.name} imports internal module {mod}"


# Every field of every model this module checks, with a value other than its default. The
# network built with it must differ from the default one: in its layers (repr: shapes,
# rates, options), its parameters, or its output, in eval or in train mode, for one seed.
# conv-f's pad_small only matters for inputs under 11x11, so it is built on digits.
FIELD_VALUES = {
    "cifar-cnn": {"filters": 16, "extra_conv": True, "hidden": 64, "block_dropout": (0.1, 0.1, 0.1), "dropout": 0.1},
    "conv-f": {"filters": 32, "third_conv": True, "pad_small": False},
    "lenet5": {"activation": "relu", "pooling": "max", "c3_connections": "full", "input_size": 36},
    "mlp": {"hidden": (50,)},
    "mnist-cnn": {"filters": 16, "extra_conv": True, "hidden": 64, "dropout": 0.1, "relu_logits": True},
    "wide-resnet": {"depth": 16, "widen_factor": 1, "dropout": 0.5},  # SMALL builds it with 0.3
}


def test_every_model_field_has_a_value_to_pin():
    for name in MODELS:
        fields = set(REGISTRY.get("model", name).Config.model_fields) - {"normalize"}  # the kernel's, below
        assert fields == set(FIELD_VALUES[name]), name


def _fingerprint(net: nn.Module, x: torch.Tensor) -> tuple:
    torch.manual_seed(1)
    with torch.no_grad():
        train_out = net.train()(x)
        eval_out = net.eval()(x)
    return repr(net), [tuple(p.shape) for p in net.parameters()], eval_out, train_out


def _same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[1] == b[1] and all(
        u.shape == v.shape and torch.equal(u, v) for u, v in zip(a[2:], b[2:])
    )


@pytest.mark.parametrize("name,field", [(n, f) for n in MODELS for f in [*FIELD_VALUES[n], "normalize"]])
def test_every_model_field_changes_the_network(name, field):
    shape_key = "digits" if (name, field) == ("conv-f", "pad_small") else "mnist"
    value = FIELD_VALUES[name].get(field, False)  # normalize: off
    x = torch.rand(4, *SHAPES[shape_key][0], generator=torch.Generator().manual_seed(0))
    base = _fingerprint(build(name, shape_key), x)
    if (name, field) == ("conv-f", "pad_small"):
        with pytest.raises(advx.ConfigError, match="pad_small"):  # too small without the padding
            build(name, shape_key, **{field: value})
        return
    changed = _fingerprint(build(name, shape_key, **{field: value}), x)
    assert not _same(base, changed), f"{name}.{field} = {value!r} built the same network as the default"
