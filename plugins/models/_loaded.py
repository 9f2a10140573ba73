"""What the models advx loads instead of training share: files, weights and adapters.

A model of the user's own (``python``, ``file``, ``timm``; ``vgg19`` and ``inception-v3``
read their weights through here too) arrives trained, so advx must evaluate exactly the
network the user has, fed exactly what it was trained on. Three things go wrong in
practice, and each has its piece here:

* **The file.** A corrupted download loaded as weights is the most frequent complaint
  about model zoos, and a changed file under an unchanged path must not reuse old results.
  ``sha256`` is checked before anything is read; left out, it is filled in with the file's
  hash when the config is validated, so the hash is part of every cell key and result row.
  Weights are read with ``torch.load(..., weights_only=True)`` (tensors and plain
  containers: a pickle that would import or call anything is refused) or with
  ``safetensors`` (optional extra); nothing in a weights file is ever executed.
* **The weights.** Checkpoints nest the ``state_dict`` under a key (``key``) and carry the
  ``module.`` prefix of DataParallel (``strip_prefix``); keys that do not fit the network
  are one line naming the first few, never a silent partial load.
* **Inputs and outputs.** advx attacks in the dataset's pixel range (``bounds``, usually
  [0, 1]) and measures every budget there. A model trained on 0..255 inputs
  (``input_range``) or standardised outside itself (``mean``/``std``) gets those steps as
  layers in front of it, so the attack still sees pixel units; wrong input scaling is the
  field's top source of wrong robustness numbers. A model returning a dict, a tuple or an
  object gets ``output`` (a key, an index or an attribute) to pick its logits. A model
  returning probabilities is still refused by the kernel's ``check_model``.

Built networks are probed once (a batch drawn inside the bounds): calling it must work,
give one row of ``num_classes`` logits per example, the same twice (dropout off in eval
mode) and the same for an example alone as in a batch (no batch statistics), so that a
model saved in training mode is a one-line error at build time, not a quietly random
evaluation.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import struct
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor, nn

from advx import AdvxError, ConfigError, DatasetInfo, Model, ModelConfig, Normalize, select_output

SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
_HASHES: dict[tuple[str, int, int], str] = {}


def first_line(exc: BaseException) -> str:
    """``Type: first meaningful line`` of an exception (torch's messages span many lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def file_sha256(path: str) -> str:
    """SHA-256 of a file, computed once per path, size and modification time."""
    st = os.stat(path)
    k = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if k not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[k] = h.hexdigest()
    return _HASHES[k]


def checked_file(plugin: str, field: str, path: str, sha256: str | None) -> str:
    """``path`` if it is a file whose hash is ``sha256`` (when given); else a one-line ``ConfigError``."""
    if not os.path.isfile(path):
        raise ConfigError(f'model "{plugin}": {field}: file {path!r} does not exist (advx never downloads models)')
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256.lower():
            raise ConfigError(
                f'model "{plugin}": sha256: {path!r} has sha256 {actual}, not {sha256.lower()} '
                "(a corrupted or different file, or changed since the spec was read); nothing was loaded"
            )
    return path


# -- configs ------------------------------------------------------------------------------------


def sha256_field(what: str) -> Any:
    """The ``sha256`` field of a config naming a file (declare it after the file's field)."""
    return Field(
        None,
        pattern=SHA256_PATTERN,
        validate_default=True,  # left out, the validator fills it in
        description=f"expected SHA-256 of {what}, checked before it is read (default: the file's own, "
        "recorded so that a changed file makes new cells)",
    )


class PretrainedModel(Model):
    """A model plugin whose ``build`` reads the network's final weights: never trained by advx."""

    @property
    def pretrained(self) -> bool:
        return True



class AdapterConfig(ModelConfig):
    """Fields every loaded model has: what its inputs and outputs look like."""

    normalize: bool = Field(
        False,
        description="prepend the dataset's declared mean/std; off by default: a model of your own expects "
        "the standardisation it was trained with, given as mean/std",
    )
    input_range: tuple[float, float] | None = Field(
        None,
        description="low and high of the inputs the model expects, e.g. (0, 255); advx maps the dataset's "
        "bounds linearly onto it before the model (budgets stay in the dataset's units)",
    )
    mean: tuple[float, ...] | None = Field(
        None, min_length=1, description="per-channel mean the model subtracts outside itself, in its input units (after input_range)"
    )
    std: tuple[float, ...] | None = Field(
        None, min_length=1, validate_default=True, description="per-channel std the model divides by outside itself (with mean)"
    )
    output: str | int | None = Field(
        None,
        description="where the logits are when the model returns a dict (key), a tuple or list (index) or an object (attribute)",
    )

    @field_validator("input_range")
    @classmethod
    def _check_range(cls, v: tuple[float, float] | None, info: ValidationInfo) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"low must be below high, got {list(v)}")
        if v is not None and info.data.get("normalize"):
            raise ValueError("normalize puts the dataset's standardisation before the model; it cannot be combined with input_range")
        return v

    @field_validator("std")
    @classmethod
    def _check_std(cls, v: tuple[float, ...] | None, info: ValidationInfo) -> tuple[float, ...] | None:
        mean = info.data.get("mean")
        if "mean" not in info.data:  # mean itself was invalid (reported on its own)
            return v
        if (mean is None) != (v is None):
            raise ValueError("mean and std go together: give both or neither")
        if v is None:
            return v
        if not all(s > 0 for s in v):
            raise ValueError(f"every std must be positive, got {list(v)}")
        if len(mean) != len(v):
            raise ValueError(f"{len(v)} values for {len(mean)} means")
        if info.data.get("normalize"):
            raise ValueError("normalize puts the dataset's standardisation before the model; it cannot be combined with mean/std")
        return v


class HashedFileConfig(ModelConfig):
    """A config naming a file (``hashed_field``) and its ``sha256``, filled in when left out.

    Subclasses declare the file field before ``sha256``, with ``validate_default=True`` (the
    check reads the file field, and must run when ``sha256`` is left out).
    """

    hashed_field: ClassVar[str] = "weights"

    @field_validator("sha256", check_fields=False)
    @classmethod
    def _fill_or_check_sha256(cls, v: str | None, info: ValidationInfo) -> str | None:
        # Filled in, the hash enters the cell key (and the results) through the config: a
        # changed file under the same path makes new cells instead of reusing old numbers.
        path = info.data.get(cls.hashed_field)
        if v is not None and path is None:
            raise ValueError(f"applies to a file, and {cls.hashed_field} is not set")
        if not isinstance(path, str) or not os.path.isfile(path):
            return None if v is None else v.lower()  # a missing file is reported when the model is built
        actual = file_sha256(path)
        if v is not None and v.lower() != actual:
            raise ValueError(f"{path!r} has sha256 {actual}, not {v.lower()} (a corrupted or different file); nothing was loaded")
        return actual


class WeightsConfig(AdapterConfig, HashedFileConfig):
    """A network built from code (the user's or a library's) plus a weights file."""

    weights: str | None = Field(None, description="path of a state_dict file (torch.save'd, read with weights_only=True, or .safetensors)")
    key: str | None = Field(None, description="entry of the weights file that holds the state_dict, e.g. 'state_dict' or 'model'")
    strip_prefix: str | None = Field(None, min_length=1, description="prefix removed from every weight name that has it, e.g. 'module.' (DataParallel)")
    sha256: str | None = sha256_field("the weights file")

    @field_validator("key", "strip_prefix")
    @classmethod
    def _needs_weights(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and info.data.get("weights") is None:
            raise ValueError("applies to a weights file, and weights is not set")
        return v


# -- weights ------------------------------------------------------------------------------------


def _is_safetensors(path: str) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    if path.endswith(".safetensors"):
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < os.path.getsize(path)


def _read_safetensors(plugin: str, path: str) -> dict[str, Tensor]:
    try:
        st = importlib.import_module("safetensors.torch")
    except ImportError:
        raise ConfigError(
            f"model \"{plugin}\": weights: {path!r} is a safetensors file, and the safetensors package is not "
            "installed: pip install 'advx[safetensors]'"
        ) from None
    try:
        return st.load_file(path, device="cpu")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's file problem
        raise ConfigError(f'model "{plugin}": weights: cannot read {path!r} ({first_line(exc)})') from None


def _read_torch(plugin: str, path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, not a checkpoint, or a pickle that would run code
        if "TorchScript archive" in str(exc):
            raise ConfigError(f'model "{plugin}": weights: {path!r} is a TorchScript archive, not a state_dict; use the model "file"') from None
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc)) if "Weights only load failed" in str(exc) else None
        if refused:
            raise ConfigError(
                f'model "{plugin}": weights: {path!r} is a pickle that would load {refused.group(1)}, and advx reads weights '
                "with weights_only=True (tensors and plain containers only); nothing in it was run"
            ) from None
        raise ConfigError(f'model "{plugin}": weights: cannot read {path!r} ({first_line(exc)})') from None


def _names(keys: Any, n: int = 3) -> str:
    keys = [str(k) for k in keys]
    return ", ".join(repr(k) for k in keys[:n]) + (", ..." if len(keys) > n else "")


def read_state_dict(
    plugin: str, path: str, key: str | None = None, strip_prefix: str | None = None, unwrap: tuple[str, ...] = ()
) -> dict[str, Tensor]:
    """The ``state_dict`` in ``path``: under ``key`` (or the first of ``unwrap`` present), prefix stripped.

    ``path`` must have been checked (``checked_file``). Every failure is one ``ConfigError`` line
    naming the file.
    """
    if _is_safetensors(path):
        if key is not None:
            raise ConfigError(f'model "{plugin}": key: {path!r} is a flat safetensors file with no nested entries; leave key out')
        blob: Any = _read_safetensors(plugin, path)
    else:
        blob = _read_torch(plugin, path)
        if key is not None:
            if not isinstance(blob, Mapping) or key not in blob:
                have = f"its entries: {_names(blob.keys(), 8)}" if isinstance(blob, Mapping) else f"it holds a {type(blob).__name__}"
                raise ConfigError(f'model "{plugin}": key: {key!r} is not an entry of {path!r} ({have})')
            blob = blob[key]
        else:
            found = next((k for k in unwrap if isinstance(blob, Mapping) and isinstance(blob.get(k), Mapping)), None)
            if found is not None:
                blob = blob[found]
    if not isinstance(blob, Mapping) or not blob:
        raise ConfigError(f'model "{plugin}": weights: {path!r} holds no state_dict (a {type(blob).__name__}{" with no entries" if isinstance(blob, Mapping) else ""})')
    if not all(isinstance(v, Tensor) for v in blob.values()):
        nested = [k for k, v in blob.items() if isinstance(v, Mapping)]
        hint = f"; set key to the entry holding the weights, e.g. key = {nested[0]!r}" if nested else ""
        raise ConfigError(f'model "{plugin}": weights: {path!r} is a checkpoint, not a state_dict of tensors (entries {_names(blob.keys(), 6)}){hint}')
    if strip_prefix:
        blob = {k[len(strip_prefix) :] if k.startswith(strip_prefix) else k: v for k, v in blob.items()}
    return dict(blob)


def load_weights(plugin: str, net: nn.Module, state: dict[str, Tensor], path: str, what: str, assign: bool = False) -> None:
    """Load ``state`` into ``net``, all keys and shapes matching; else one line naming the first few.

    ``assign`` makes the file's tensors the network's own (for a network built on the meta
    device, which holds no memory until then); they are converted to float32 first.
    """
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_names(missing)})")
        if unexpected:
            hint = " (try strip_prefix)" if not missing or len({k.split(".")[0] for k in unexpected}) == 1 else ""
            parts.append(f"{len(unexpected)} unexpected keys ({_names(unexpected)}){hint}")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shape mismatches (first {k!r}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)})")
        raise ConfigError(f'model "{plugin}": weights: {path!r} does not fit {what}: ' + "; ".join(parts))
    if assign:
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    net.load_state_dict(state, assign=assign)
    left = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    if left:
        raise ConfigError(f'model "{plugin}": weights: {path!r} leaves {len(left)} tensors unset (first {left[0]!r})')


# -- adapters -----------------------------------------------------------------------------------


class InputRange(nn.Module):
    """Maps the dataset's bounds linearly onto the range the model expects (e.g. [0, 1] -> [0, 255])."""

    def __init__(self, bounds: tuple[float, float], target: tuple[float, float]) -> None:
        super().__init__()
        (a, b), (lo, hi) = bounds, target
        self.scale = (hi - lo) / (b - a)
        self.shift = lo - a * self.scale

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, shift={self.shift:g}"


class AdaptedModel(nn.Module):
    """A loaded network behind its input adapters (range, then mean/std), with its logits picked out."""

    def __init__(self, net: nn.Module, prep: nn.Sequential, output: str | int | None) -> None:
        super().__init__()
        self.prep = prep
        self.net = net
        self.output = output

    def forward(self, x: Tensor) -> Tensor:
        return select_output(self.net(self.prep(x)), self.output)

    def hidden_states(self, x: Tensor) -> dict[str, Tensor]:
        """The network's own ``hidden_states`` (an ``advx.Classifier``), on the adapted inputs."""
        fn = getattr(self.net, "hidden_states", None)
        if not callable(fn):
            raise ConfigError(f"the loaded {type(self.net).__name__} has no hidden_states(x); detectors that read hidden layers need an advx.Classifier")
        return fn(self.prep(x))


def adapt(plugin: str, net: nn.Module, config: AdapterConfig, info: DatasetInfo) -> AdaptedModel:
    """``net`` with the config's adapters, probed on a batch inside the dataset's bounds."""
    prep = nn.Sequential()
    if config.input_range is not None:
        prep.append(InputRange(info.bounds, config.input_range))
    if config.mean is not None and config.std is not None:
        channels = info.input_shape[0] if len(info.input_shape) > 1 else 1
        if len(config.mean) not in (1, channels):
            raise ConfigError(f'model "{plugin}": mean: {len(config.mean)} values for inputs of {channels} channels')
        prep.append(Normalize(config.mean, config.std))
    model = AdaptedModel(net, prep, config.output)
    probe(plugin, model, info)
    return model


def probe(plugin: str, model: nn.Module, info: DatasetInfo) -> None:
    """Call ``model`` on a small batch inside the bounds; one line on anything an evaluation would trip on."""
    lo, hi = info.bounds
    x = lo + (hi - lo) * torch.rand(2, *info.input_shape, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out, again, alone = model(x), model(x), model(x[:1])
    except AdvxError as exc:
        raise type(exc)(f'model "{plugin}": {exc}') from None
    except Exception as exc:  # noqa: BLE001 - the user's network failing on our inputs is a config problem
        raise ConfigError(f'model "{plugin}": calling it on a batch of shape {tuple(x.shape)} failed ({first_line(exc)})') from None
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(f'model "{plugin}": it returns {shape} for a batch of 2; expected logits of shape (batch, classes)')
    if out.shape[1] != info.num_classes:
        raise ConfigError(f'model "{plugin}": it returns {out.shape[1]} logits per example, and dataset "{info.name}" has {info.num_classes} classes')
    tol = dict(rtol=1e-4, atol=1e-4 * max(1.0, float(out.abs().max())))
    if not torch.allclose(out, again, **tol):
        raise ConfigError(
            f'model "{plugin}": two calls on the same inputs differ in eval mode (dropout saved in training mode? '
            "trace, script or export the model after model.eval())"
        )
    if not torch.allclose(out[:1], alone, **tol):
        raise ConfigError(
            f'model "{plugin}": an example\'s logits depend on the rest of its batch (batch norm saved in training mode? '
            "save the model after model.eval())"
        )
