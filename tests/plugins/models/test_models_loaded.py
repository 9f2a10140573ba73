"""Models of the user's own: ``python`` (factory + weights), ``file`` (TorchScript, torch.export), ``timm``.

The test plays the user: it writes its own network module, trains the network on digits
the way its own code would (raw pixels 0..16, standardised outside the network, a dict
returned), saves it in every format, and evaluates each through a spec. Every config
field is pinned by a test that fails when the field is ignored; every bad file (wrong
keys, wrong hash, a pickle that would run code, a truncated file) is one line, and
nothing in it runs.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import advx

REGISTRY = advx.Registry.discover()
DIGITS = advx.DatasetInfo(name="digits", input_shape=(1, 8, 8), num_classes=10, mean=(0.3051,), std=(0.3820,))
MODULE = "advx_test_usernet"  # the user's own module, written by the fixture below
ADAPT = {"input_range": [0.0, 16.0], "mean": [4.88], "std": [6.11], "output": "logits"}

USER_CODE = '''
"""The user's own network code (written by the test into a folder on sys.path)."""
import types

import torch
from torch import nn

import advx


class DigitsNet(nn.Module):
    """Raw pixels 0..16, standardised outside (mean 4.88, std 6.11); returns a dict."""

    def __init__(self, hidden=32):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        logits = self.body(x)
        return {"features": logits.detach() * 0, "logits": logits}


class TupleNet(DigitsNet):
    def forward(self, x):
        return (x.flatten(1)[:, :3], super().forward(x)["logits"])


class ObjectNet(DigitsNet):
    def forward(self, x):
        return types.SimpleNamespace(logits=super().forward(x)["logits"])


class ProbabilityNet(DigitsNet):
    def forward(self, x):
        return super().forward(x)["logits"].softmax(1)


class HiddenNet(advx.Classifier):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 16)
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x.flatten(1))))

    def hidden_states(self, x):
        return {"fc": torch.relu(self.fc(x.flatten(1)))}


class DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10))

    def forward(self, x):
        return self.body(x)


class BatchStatsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.BatchNorm1d(10))

    def forward(self, x):
        return self.body(x)


def make(hidden=32):
    return DigitsNet(hidden)


def broken():
    raise ValueError("boom in the user's factory")


def not_a_module():
    return 3
'''


def raw(x: torch.Tensor) -> torch.Tensor:
    """What the user's training code feeds its network: 0..16 pixels, standardised."""
    return (x * 16 - 4.88) / 6.11


class Saved(types.SimpleNamespace):
    """The user's module, trained network and the files it was saved to."""


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> Saved:
    root = tmp_path_factory.mktemp("user")
    (root / f"{MODULE}.py").write_text(USER_CODE)
    sys.path.insert(0, str(root))
    try:
        mod = importlib.import_module(MODULE)
        ds = REGISTRY.dataset("digits")
        x, y = advx.take(ds.load("train"), 10_000)
        torch.manual_seed(0)
        net = mod.DigitsNet()
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        for _ in range(150):
            opt.zero_grad()
            nn.functional.cross_entropy(net(raw(x))["logits"], y).backward()
            opt.step()
        net.eval()
        state = net.state_dict()
        s = Saved(root=root, mod=mod, net=net)
        s.checkpoint = root / "ckpt.pt"  # DataParallel-style names, nested under "model"
        torch.save({"epoch": 150, "model": {f"module.{k}": v for k, v in state.items()}}, s.checkpoint)
        s.plain = root / "plain.pt"
        torch.save(state, s.plain)
        s.torchscript = root / "net.torchscript"
        torch.jit.trace(net, raw(x[:2]), strict=False).save(str(s.torchscript))
        s.export = root / "net.pt2"
        program = torch.export.export(net, (raw(x[:2]),), dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, str(s.export))
        xt, yt = advx.take(ds.load("test"), 100)
        with torch.no_grad():
            s.clean = float((net(raw(xt))["logits"].argmax(1) == yt).float().mean())
        yield s
    finally:
        sys.path.remove(str(root))
        sys.modules.pop(MODULE, None)


def spec(tmp_path: Path, models: list[dict], **matrix) -> dict:
    return {
        "matrix": {"name": "own", "samples": 100, "batch_size": 100, "cache_dir": str(tmp_path / "cache"), **matrix},
        "datasets": [{"name": "digits"}],
        "models": models,
        "attacks": [{"name": "fgsm", "eps": 0.1}],
    }


def build(name: str, info: advx.DatasetInfo = DIGITS, **params) -> nn.Module:
    return advx.build_model(REGISTRY.model(name, **params), info).eval()


def one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def evil_pickle(marker: Path) -> object:
    """An object whose unpickling would create ``marker`` (it must never exist)."""

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    return Evil()


# -- every format through a spec ---------------------------------------------------------------


def test_every_format_evaluates_the_same_network_through_a_spec(user, tmp_path):
    models = [
        {"name": "python", "factory": f"{MODULE}:DigitsNet", "weights": str(user.checkpoint), "key": "model", "strip_prefix": "module.", **ADAPT},
        {"name": "python", "factory": f"{MODULE}:make", "kwargs": {"hidden": 32}, "weights": str(user.plain), **ADAPT},
        {"name": "file", "path": str(user.torchscript), **ADAPT},
        {"name": "file", "path": str(user.export), **ADAPT},
    ]
    res = advx.run_matrix(spec(tmp_path, models))
    assert res.done == 4, [r.get("error") for r in res.rows]
    assert user.clean > 0.9
    # the user's own accuracy, measured with the user's own preprocessing: the adapters are right
    assert [r["clean_accuracy"] for r in res.rows] == [user.clean] * 4
    assert len({r["robust_accuracy"] for r in res.rows}) == 1 and res.rows[0]["robust_accuracy"] < user.clean
    assert all(t["cached"] and "loaded, not trained" in t["description"] for t in res.trainings)


def test_safetensors_weights(user, tmp_path):
    st = pytest.importorskip("safetensors.torch", reason="safetensors is an optional extra")
    path = tmp_path / "w.safetensors"
    st.save_file({f"module.{k}": v.contiguous() for k, v in user.net.state_dict().items()}, str(path))
    net = build("python", factory=f"{MODULE}:DigitsNet", weights=str(path), strip_prefix="module.", **ADAPT)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x), user.net(raw(x))["logits"])
    with pytest.raises(advx.ConfigError, match="key: .* flat safetensors file") as exc:
        build("python", factory=f"{MODULE}:DigitsNet", weights=str(path), key="model", **ADAPT)
    one_line_error(exc)


def test_safetensors_without_the_package_names_the_extra(user, tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(advx.ConfigError, match=r"pip install 'advx\[safetensors\]'") as exc:
        build("python", factory=f"{MODULE}:DigitsNet", weights=str(path), **ADAPT)
    one_line_error(exc)


def test_exported_program_gives_input_gradients_and_passes_the_eval_check(user):
    net = build("file", path=str(user.export), **ADAPT)
    x = torch.rand(5, 1, 8, 8, requires_grad=True)
    net(x)[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    advx.check_model(net.train(False), x.detach(), 10)  # eval mode reads false everywhere
    net.train()  # the program refuses train(); its holder keeps it out
    net.eval()


# -- adapters ---------------------------------------------------------------------------------


def test_input_range_and_mean_std_are_applied_in_that_order(user):
    x = torch.rand(6, 1, 8, 8)
    weights = {"factory": f"{MODULE}:DigitsNet", "weights": str(user.plain), "output": "logits"}
    with torch.no_grad():
        want = user.net(raw(x))["logits"]
        full = build("python", **weights, input_range=[0.0, 16.0], mean=[4.88], std=[6.11])(x)
        no_range = build("python", **weights, mean=[4.88], std=[6.11])(x)
        no_stats = build("python", **weights, input_range=[0.0, 16.0])(x)
        only_range = user.net(x * 16)["logits"]
    torch.testing.assert_close(full, want)
    torch.testing.assert_close(no_stats, only_range)
    assert not torch.allclose(no_range, want) and not torch.allclose(no_stats, want)


def test_input_range_maps_the_datasets_bounds(user):
    """Bounds [-1, 1] onto [0, 16]: the adapter reads the dataset's bounds, not an assumed [0, 1]."""
    info = advx.DatasetInfo(name="signed", input_shape=(1, 8, 8), num_classes=10, bounds=(-1.0, 1.0))
    net = build("python", info, factory=f"{MODULE}:DigitsNet", weights=str(user.plain), input_range=[0.0, 16.0], output="logits")
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(net(x), user.net((x + 1) * 8)["logits"])


def test_normalize_uses_the_datasets_statistics_and_is_off_by_default(user):
    base = {"factory": f"{MODULE}:DigitsNet", "weights": str(user.plain), "output": "logits"}
    assert not isinstance(build("python", **base), advx.NormalizedModel)
    net = build("python", **base, normalize=True)
    assert isinstance(net, advx.NormalizedModel)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x), user.net((x - 0.3051) / 0.3820)["logits"])


@pytest.mark.parametrize(
    "factory, output",
    [("DigitsNet", "logits"), ("TupleNet", 1), ("TupleNet", -1), ("ObjectNet", "logits")],
)
def test_output_picks_the_logits(user, factory, output):
    net = build("python", factory=f"{MODULE}:{factory}", weights=str(user.plain), input_range=[0.0, 16.0], mean=[4.88], std=[6.11], output=output)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x), user.net(raw(x))["logits"])


@pytest.mark.parametrize(
    "factory, output, message",
    [
        ("DigitsNet", None, r"output: the model returns a dict \(keys 'features', 'logits'\); set output"),
        ("DigitsNet", "scores", r"output: 'scores' is not a key"),
        ("TupleNet", None, r"output: the model returns a tuple of 2; set output to the index"),
        ("TupleNet", 2, r"output: the model returns a tuple of 2; 2 is not an index"),
        ("ObjectNet", None, r"output: the model returns a SimpleNamespace, not a tensor"),
        ("ObjectNet", "scores", r"output: the model returns a SimpleNamespace, which has no 'scores'"),
    ],
)
def test_output_errors_are_one_line_at_build(user, factory, output, message):
    with pytest.raises(advx.ConfigError, match=rf'model "python": {message}') as exc:
        build("python", factory=f"{MODULE}:{factory}", weights=str(user.plain), output=output)
    one_line_error(exc)


def test_a_model_returning_probabilities_is_still_refused_by_the_kernel(user, tmp_path):
    models = [{"name": "python", "factory": f"{MODULE}:ProbabilityNet", "weights": str(user.plain), "input_range": [0.0, 16.0]}]
    (row,) = advx.run_matrix(spec(tmp_path, models)).rows
    assert row["status"] == "failed" and "returns probabilities" in row["error"]


@pytest.mark.parametrize(
    "params, field",
    [
        ({"input_range": [16.0, 0.0]}, "input_range"),
        ({"mean": [4.88]}, "std"),
        ({"std": [6.11]}, "std"),
        ({"mean": [1.0, 2.0], "std": [1.0]}, "std"),
        ({"mean": [1.0], "std": [0.0]}, "std"),
        ({"normalize": True, "mean": [1.0], "std": [1.0]}, "std"),
        ({"normalize": True, "input_range": [0.0, 255.0]}, "input_range"),
        ({"key": "model"}, "key"),
        ({"strip_prefix": "module."}, "strip_prefix"),
        ({"sha256": "0" * 64}, "sha256"),
        ({"sha256": "abc"}, "sha256"),
        ({"output": 1.5}, "output"),
        ({"factory": "no colon"}, "factory"),
        ({"pretrained": "yes"}, "pretrained"),
        ({"weigths": "w.pt"}, "weigths"),
    ],
)
def test_invalid_python_config_names_the_field(params, field, tmp_path):
    models = [{"name": "python", "factory": f"{MODULE}:make", **params}]
    with pytest.raises(advx.ConfigError) as exc:
        advx.plan(advx.MatrixSpec.from_dict(spec(tmp_path, models)), REGISTRY)  # strict, as a spec is read
    msg = one_line_error(exc)
    assert msg.startswith(f'models[0] "python": {field}:') or msg.startswith(f'models[0] "python": {field}.'), msg  # output.str: ...


def test_mean_with_the_wrong_number_of_channels(user):
    with pytest.raises(advx.ConfigError, match=r"mean: 3 values for inputs of 1 channels"):
        build("python", factory=f"{MODULE}:DigitsNet", weights=str(user.plain), mean=[1.0, 1.0, 1.0], std=[1.0, 1.0, 1.0], output="logits")


# -- python -----------------------------------------------------------------------------------


def test_kwargs_reach_the_factory(user):
    small = build("python", factory=f"{MODULE}:make", kwargs={"hidden": 5}, output="logits")
    assert small.net.body[1].out_features == 5
    assert build("python", factory=f"{MODULE}:make", output="logits").net.body[1].out_features == 32


@pytest.mark.parametrize(
    "factory, message",
    [
        ("advx_no_such_module:make", r"factory: cannot import 'advx_no_such_module' \(ModuleNotFoundError"),
        (f"{MODULE}:nothing", rf"factory: '{MODULE}' has no 'nothing'"),
        (f"{MODULE}:broken", r"factory '.*:broken' raised ValueError: boom in the user's factory"),
        (f"{MODULE}:not_a_module", r"returned a int, not a torch.nn.Module"),
    ],
)
def test_factory_errors_are_one_line(user, factory, message):
    with pytest.raises(advx.ConfigError, match=message) as exc:
        build("python", factory=factory)
    one_line_error(exc)


def test_weights_are_optional_and_key_selects_the_entry(user):
    torch.manual_seed(3)
    fresh = build("python", factory=f"{MODULE}:DigitsNet", output="logits")  # the factory's own init
    loaded = build("python", factory=f"{MODULE}:DigitsNet", output="logits", weights=str(user.checkpoint), key="model", strip_prefix="module.")
    assert not torch.equal(fresh.net.body[1].weight, user.net.body[1].weight)
    assert torch.equal(loaded.net.body[1].weight, user.net.body[1].weight)


def test_pretrained_false_lets_advx_train_the_network(user, tmp_path):
    base = {"name": "python", "factory": f"{MODULE}:DigitsNet", "output": "logits", "normalize": True, "train": {"epochs": 20, "lr": 0.01}}
    as_is = advx.run_matrix(spec(tmp_path, [base]))
    trained = advx.run_matrix(spec(tmp_path, [{**base, "pretrained": False}]))
    assert [t["cached"] for t in as_is.trainings] == [True] and [t["cached"] for t in trained.trainings] == [False]
    assert as_is.rows[0]["clean_accuracy"] < 0.5 < trained.rows[0]["clean_accuracy"]  # an untrained net vs a trained one


def test_hidden_states_pass_through_the_adapters(user):
    net = build("python", factory=f"{MODULE}:HiddenNet", input_range=[0.0, 16.0])
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(net.hidden_states(x)["fc"], net.net.hidden_states(x * 16)["fc"])
    with pytest.raises(advx.ConfigError, match="has no hidden_states"):
        build("file", path=str(user.torchscript), **ADAPT).hidden_states(x)


def test_modes_saved_in_training_are_one_line_errors_at_build(user, tmp_path):
    """Dropout on and batch statistics: what a model traced or exported in training mode does."""
    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8)
    path = tmp_path / "dropout.torchscript"
    torch.jit.trace(user.mod.DropoutNet().train(), x, check_trace=False).save(str(path))
    with pytest.raises(advx.ConfigError, match="two calls on the same inputs differ in eval mode") as exc:
        build("file", path=str(path))
    one_line_error(exc)
    path = tmp_path / "batchstats.pt2"
    torch.export.save(torch.export.export(user.mod.BatchStatsNet().train(), (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)), str(path))
    with pytest.raises(advx.ConfigError, match="logits depend on the rest of its batch") as exc:
        build("file", path=str(path))
    one_line_error(exc)


def test_wrong_number_of_classes_and_uncallable_inputs(user):
    three = advx.DatasetInfo(name="three", input_shape=(1, 8, 8), num_classes=3)
    with pytest.raises(advx.ConfigError, match=r'returns 10 logits per example, and dataset "three" has 3 classes'):
        build("file", three, path=str(user.torchscript), **ADAPT)
    big = advx.DatasetInfo(name="big", input_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(advx.ConfigError, match=r"calling it on a batch of shape \(2, 1, 28, 28\) failed") as exc:
        build("file", big, path=str(user.export), **ADAPT)
    one_line_error(exc)


# -- file -------------------------------------------------------------------------------------


def test_format_is_detected_or_forced(user):
    ts, ex = str(user.torchscript), str(user.export)
    assert isinstance(build("file", path=ts, format="torchscript", **ADAPT).net, torch.jit.ScriptModule)
    assert not isinstance(build("file", path=ex, format="export", **ADAPT).net, torch.jit.ScriptModule)
    with pytest.raises(advx.ConfigError, match="not part of a plain exported program") as exc:
        build("file", path=ts, format="export", **ADAPT)
    one_line_error(exc)
    with pytest.raises(advx.ConfigError, match="cannot load .* as TorchScript") as exc:
        build("file", path=ex, format="torchscript", **ADAPT)
    one_line_error(exc)


def test_a_torch_save_of_a_whole_module_is_never_unpickled(user, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "whole.pt"
    torch.save({"net": user.net, "evil": evil_pickle(marker)}, path)
    with pytest.raises(advx.ConfigError, match="is a torch.save pickle, which advx never unpickles") as exc:
        build("file", path=str(path))
    one_line_error(exc)
    assert not marker.exists()


def _rewrite_zip(src: Path, dst: Path, change) -> None:
    """Copy an archive, passing every entry's (name, bytes) through ``change``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, change(name, zin.read(name)))


def test_an_export_program_with_a_pickled_weight_is_refused_before_reading(user, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "pickled-weight.pt2"
    import io

    buf = io.BytesIO()
    torch.save(evil_pickle(marker), buf)

    def change(name, data):
        if name.endswith("_weights_config.json"):
            cfg = json.loads(data)
            first = next(iter(cfg["config"].values()))
            first["use_pickle"] = True
            return json.dumps(cfg).encode()
        if name.endswith("data/weights/weight_0"):
            return buf.getvalue()
        return data

    _rewrite_zip(user.export, path, change)
    with pytest.raises(advx.ConfigError, match=r"stores '.*' as a pickled object, which advx does not unpickle") as exc:
        build("file", path=str(path), **ADAPT)
    one_line_error(exc)
    assert not marker.exists()


def test_an_export_program_whose_sample_inputs_would_run_code_is_refused(user, tmp_path):
    """torch.export.load retries a failed restricted load without restriction; advx forces it."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil-inputs.pt2"
    import io

    buf = io.BytesIO()
    torch.save((evil_pickle(marker),), buf)
    _rewrite_zip(user.export, path, lambda name, data: buf.getvalue() if "data/sample_inputs/" in name else data)
    with pytest.raises(advx.ConfigError, match="cannot load .* as a torch.export program") as exc:
        build("file", path=str(path), **ADAPT)
    one_line_error(exc)
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # restored after loading


# -- bad files: one line each, nothing run ------------------------------------------------------


def _truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


@pytest.mark.parametrize("fmt", ["state_dict", "safetensors", "torchscript", "export"])
def test_a_truncated_file_is_one_line(user, tmp_path, fmt):
    if fmt == "safetensors":
        st = pytest.importorskip("safetensors.torch", reason="safetensors is an optional extra")
        full = tmp_path / "full.safetensors"
        st.save_file({k: v.contiguous() for k, v in user.net.state_dict().items()}, str(full))
        params = {"name": "python", "factory": f"{MODULE}:DigitsNet", "weights": str(_truncated(full, tmp_path / "w.safetensors"))}
    elif fmt == "state_dict":
        params = {"name": "python", "factory": f"{MODULE}:DigitsNet", "weights": str(_truncated(user.plain, tmp_path / "w.pt"))}
    else:
        src = user.torchscript if fmt == "torchscript" else user.export
        params = {"name": "file", "path": str(_truncated(src, tmp_path / src.name))}
    (row,) = advx.run_matrix(spec(tmp_path, [{**params, **ADAPT}])).rows
    assert row["status"] == "failed" and "\n" not in row["error"]
    assert row["error"].startswith(f'model "{params["name"]}": ') and str(tmp_path) in row["error"]
    assert "cannot read" in row["error"] or "not a complete zip file" in row["error"]


def test_weights_of_another_network_name_the_first_keys(user, tmp_path):
    other = tmp_path / "other.pt"
    torch.save(user.mod.HiddenNet().state_dict(), other)
    models = [{"name": "python", "factory": f"{MODULE}:DigitsNet", "weights": str(other), **ADAPT}]
    (row,) = advx.run_matrix(spec(tmp_path, models)).rows
    assert row["status"] == "failed" and "\n" not in row["error"]
    assert f"{str(other)!r} does not fit the network of {MODULE}:DigitsNet" in row["error"]
    assert "4 missing keys ('body.1.weight', 'body.1.bias', 'body.3.weight', ...)" in row["error"]
    assert "4 unexpected keys ('fc.weight', 'fc.bias', 'out.weight', ...)" in row["error"]


def test_shape_mismatch_and_missing_prefix_strip(user):
    with pytest.raises(advx.ConfigError, match=r"1 shape mismatches|shape mismatches \(first 'body.1.weight': file \(32, 64\), model \(5, 64\)\)"):
        build("python", factory=f"{MODULE}:make", kwargs={"hidden": 5}, weights=str(user.plain), output="logits")
    with pytest.raises(advx.ConfigError, match=r"unexpected keys \('module.body.1.weight'.*\(try strip_prefix\)"):
        build("python", factory=f"{MODULE}:DigitsNet", weights=str(user.checkpoint), key="model", output="logits")


def test_a_checkpoint_without_key_and_a_wrong_key(user):
    with pytest.raises(advx.ConfigError, match=r"is a checkpoint, not a state_dict of tensors \(entries 'epoch', 'model'\); set key to .* key = 'model'") as exc:
        build("python", factory=f"{MODULE}:DigitsNet", weights=str(user.checkpoint))
    one_line_error(exc)
    with pytest.raises(advx.ConfigError, match=r"key: 'state_dict' is not an entry of .* \(its entries: 'epoch', 'model'\)") as exc:
        build("python", factory=f"{MODULE}:DigitsNet", weights=str(user.checkpoint), key="state_dict")
    one_line_error(exc)


def test_a_wrong_hash_stops_the_spec_before_anything_runs(user, tmp_path):
    models = [{"name": "file", "path": str(user.torchscript), "sha256": "ab" * 32, **ADAPT}]
    db = tmp_path / "r.db"
    with pytest.raises(advx.ConfigError) as exc:
        advx.run_matrix(spec(tmp_path, models), store=db)
    msg = one_line_error(exc)
    assert msg.startswith('models[0] "file": sha256: ') and f"{str(user.torchscript)!r} has sha256 " in msg and "nothing was loaded" in msg
    assert not db.exists()  # nothing run, nothing recorded


def test_a_file_changed_after_the_spec_was_read_is_refused_at_build(user, tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(user.plain.read_bytes())
    model = REGISTRY.model("python", factory=f"{MODULE}:DigitsNet", weights=str(path), output="logits")
    torch.save({k: v + 1 for k, v in user.net.state_dict().items()}, path)
    with pytest.raises(advx.ConfigError, match=r"sha256: .* has sha256 [0-9a-f]{64}, not [0-9a-f]{64} .*changed since the spec was read") as exc:
        advx.build_model(model, DIGITS)
    one_line_error(exc)


def test_a_pickle_that_would_run_code_is_refused_as_weights(tmp_path, user):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"body.1.weight": evil_pickle(marker)}, path)
    models = [{"name": "python", "factory": f"{MODULE}:DigitsNet", "weights": str(path), **ADAPT}]
    (row,) = advx.run_matrix(spec(tmp_path, models)).rows
    assert row["status"] == "failed" and "\n" not in row["error"]
    assert f"weights: {str(path)!r} is a pickle that would load posix.mkdir" in row["error"] and "nothing in it was run" in row["error"]
    assert not marker.exists()


def test_a_torchscript_archive_given_as_weights_says_which_plugin(user):
    with pytest.raises(advx.ConfigError, match=r'is a TorchScript archive, not a state_dict; use the model "file"') as exc:
        build("python", factory=f"{MODULE}:DigitsNet", weights=str(user.torchscript))
    one_line_error(exc)


def test_a_missing_file_is_one_line_at_build(tmp_path):
    for name, params in (("file", {"path": str(tmp_path / "nope.pt2")}), ("python", {"factory": f"{MODULE}:make", "weights": str(tmp_path / "nope.pt")})):
        model = REGISTRY.model(name, **params)
        assert model.config.sha256 is None
        with pytest.raises(advx.ConfigError, match=r"file .*nope.* does not exist \(advx never downloads models\)") as exc:
            model.build(DIGITS)
        one_line_error(exc)


# -- the file's hash is part of the cell key ---------------------------------------------------


def test_sha256_is_filled_in_and_changes_the_cell_key_with_the_content(user, tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(user.plain.read_bytes())
    models = [{"name": "python", "factory": f"{MODULE}:DigitsNet", "weights": str(path), **ADAPT}]

    def cell_key() -> str:
        (cell,) = advx.plan(advx.MatrixSpec.from_dict(spec(tmp_path, models)), REGISTRY)
        assert cell.model.config.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        return cell.key

    db = tmp_path / "r.db"
    first = cell_key()
    assert advx.run_matrix(spec(tmp_path, models), store=db).done == 1
    assert advx.run_matrix(spec(tmp_path, models), store=db).skipped == 1  # same file: reused
    torch.save({k: v.flip(0) for k, v in user.net.state_dict().items()}, path)  # same path, new content
    os.utime(path, ns=(1, 1))  # even with an old modification time
    assert cell_key() != first
    again = advx.run_matrix(spec(tmp_path, models), store=db)
    assert again.skipped == 0 and again.done == 1
    with advx.ResultStore(db) as store:
        shas = {r["model_config"]["sha256"] for r in store.cells()}
    assert len(shas) == 2  # each result records the file it came from


def test_the_file_plugin_hashes_its_path(user):
    model = REGISTRY.model("file", path=str(user.export))
    assert model.config.sha256 == hashlib.sha256(user.export.read_bytes()).hexdigest()
    assert model.pretrained and REGISTRY.model("python", factory=f"{MODULE}:make").pretrained


# -- timm ---------------------------------------------------------------------------------------


@pytest.fixture
def fake_timm(monkeypatch, user):
    """A stand-in ``timm`` exposing ``create_model`` (real timm: the test below)."""
    calls = []

    def create_model(arch, pretrained=False, **kwargs):
        calls.append((arch, pretrained, kwargs))
        if arch != "digits-net":
            raise RuntimeError(f"Unknown model ({arch})")
        net = user.mod.TupleNet(kwargs.get("hidden", 32))
        net.pretrained_cfg = {"mean": (4.88,), "std": (6.11,)}
        return net

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    return calls


def test_timm_builds_the_arch_loads_weights_and_uses_its_statistics(user, fake_timm):
    net = build("timm", arch="digits-net", weights=str(user.plain), input_range=None, output=1, kwargs={"hidden": 32})
    assert fake_timm == [("digits-net", False, {"num_classes": 10, "in_chans": 1, "hidden": 32})]
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        # pretrained_cfg's mean/std are applied (on [0, 1] inputs here, as timm's scripts do)
        torch.testing.assert_close(net(x), user.net((x - 4.88) / 6.11)["logits"])
        own = build("timm", arch="digits-net", weights=str(user.plain), output=1, **{k: v for k, v in ADAPT.items() if k != "output"})
        torch.testing.assert_close(own(x), user.net(raw(x))["logits"])
        none = build("timm", arch="digits-net", weights=str(user.checkpoint), key="model", strip_prefix="module.", output=1, mean=[0.0], std=[1.0])
        torch.testing.assert_close(none(x), user.net(x)["logits"])


def test_timm_errors(user, fake_timm, tmp_path):
    with pytest.raises(advx.ConfigError, match=r"arch: timm.create_model\('resnet0'\) failed \(RuntimeError: Unknown model") as exc:
        build("timm", arch="resnet0", weights=str(user.plain))
    one_line_error(exc)
    with pytest.raises(advx.ConfigError, match=r"does not fit timm's digits-net: 3 shape mismatches"):
        build("timm", arch="digits-net", weights=str(user.plain), kwargs={"hidden": 7}, output=1)
    with pytest.raises(advx.ConfigError, match=r'model "timm": weights: Field required'):
        REGISTRY.model("timm", arch="resnet18")


def test_timm_normalize_replaces_the_architectures_statistics(user, fake_timm):
    net = build("timm", arch="digits-net", weights=str(user.plain), output=1, normalize=True)
    assert isinstance(net, advx.NormalizedModel) and len(net.net.prep) == 0  # the dataset's, not pretrained_cfg's too
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x), user.net((x - 0.3051) / 0.3820)["logits"])


def test_timm_missing_names_the_extra(monkeypatch, user):
    monkeypatch.setitem(sys.modules, "timm", None)
    assert REGISTRY.get("model", "timm").name == "timm"  # listed without timm
    with pytest.raises(advx.ConfigError, match=r"needs timm, which is not importable .*pip install 'advx\[timm\]'") as exc:
        build("timm", arch="resnet18", weights=str(user.plain))
    one_line_error(exc)


def test_real_timm_architecture_from_its_own_weights(tmp_path):
    timm = pytest.importorskip("timm", reason="timm is an optional extra")
    torch.manual_seed(0)
    ref = timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=3).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    info = advx.DatasetInfo(name="cifar", input_shape=(3, 32, 32), num_classes=10)
    net = build("timm", info, arch="resnet18", weights=str(path))
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(ref.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ref.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref((x - mean) / std))


# -- torchvision's plugins share the loader -----------------------------------------------------


def test_torchvision_models_arrive_trained_and_hash_their_weights(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, path)
    model = REGISTRY.model("vgg19", weights=str(path))
    assert model.pretrained
    assert model.config.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(advx.ConfigError, match=r'model "vgg19": sha256: .* has sha256 [0-9a-f]{64}, not 0{64}'):
        REGISTRY.model("vgg19", weights=str(path), sha256="0" * 64)


def test_the_torchvision_path_of_the_loader_without_torchvision(user, tmp_path):
    """What vgg19/inception-v3 do (testable here without torchvision): a state_dict under
    "state_dict" unwrapped, assigned into a network built on the meta device, half precision made float."""
    from advx.plugins.models._loaded import load_weights, read_state_dict

    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {k: v.half() for k, v in user.net.state_dict().items()}, "epoch": 3}, path)
    state = read_state_dict("vgg19", str(path), unwrap=("state_dict",))
    with torch.device("meta"):
        net = user.mod.DigitsNet()
    load_weights("vgg19", net, state, str(path), "torchvision's vgg19", assign=True)
    assert all(not p.is_meta and p.dtype == torch.float32 for p in net.parameters())
    torch.testing.assert_close(net.body[1].weight, user.net.body[1].weight, atol=1e-2, rtol=1e-2)
    with torch.device("meta"):
        bigger = user.mod.HiddenNet()
    with pytest.raises(advx.ConfigError, match=r"does not fit torchvision's vgg19: 4 missing keys"):
        load_weights("vgg19", bigger, state, str(path), "torchvision's vgg19", assign=True)


# -- the README's example, as a new user runs it ---------------------------------------------------

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_block(marker: str, lang: str) -> str:
    text = README.read_text()
    start = text.index(marker)
    found = re.search(rf"```{lang}\n(.*?)```", text[start:], re.S)
    assert found, f"no {lang} block after {marker}"
    return found.group(1)


@pytest.mark.slow
def test_readme_own_model_example_runs_as_a_new_user_would(tmp_path):
    """The README's network, its save script (outside advx) and its spec, run by the CLI in a fresh process."""
    (tmp_path / "mynet.py").write_text(readme_block("<!-- own-model-net -->", "python"))
    (tmp_path / "save.py").write_text(readme_block("<!-- own-model-save -->", "python"))
    (tmp_path / "own-model.toml").write_text(readme_block("<!-- own-model-spec -->", "toml"))
    env = {**os.environ, "PYTHONPATH": ".", "ADVX_CACHE_DIR": str(tmp_path / "cache")}
    saved = subprocess.run([sys.executable, "save.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert saved.returncode == 0, saved.stderr[-2000:]
    run = subprocess.run([sys.executable, "-m", "advx", "run", "own-model.toml", "--db", "r.db"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    with advx.ResultStore(tmp_path / "r.db") as store:
        rows = store.cells()
    assert [r["status"] for r in rows] == ["done"] * 3, [r.get("error") for r in rows]
    assert {r["clean_accuracy"] for r in rows} == {rows[0]["clean_accuracy"]} and rows[0]["clean_accuracy"] > 0.9
    assert len({r["robust_accuracy"] for r in rows}) == 1  # three formats, one network, one number
    assert "3 loaded from the cache or a model file" in run.stdout


def test_readme_timm_spec_is_valid():
    spec_ = advx.MatrixSpec.from_toml_string(readme_block("<!-- own-model-timm -->", "toml"))
    (cell,) = advx.plan(spec_, REGISTRY, locate_data=False)
    assert cell.model.name == "timm" and cell.model.config.arch == "resnet18"
