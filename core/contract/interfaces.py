"""The four plugin interfaces: Attack, Defense, Model, Dataset, and their config bases.

A plugin is a class with a kebab-case ``name``, a nested pydantic ``Config`` (types,
bounds, defaults, descriptions) and one or two abstract methods. The kernel validates a
plugin's config before it instantiates it, so an invalid value fails with a message that
names the plugin and the field, before any work is done.

Why these shapes:

* attacks receive the model per call (foolbox), not at construction (torchattacks): one
  attack object serves every cell of a matrix;
* attacks always work in the dataset's pixel range; input normalisation is part of the
  model (``Normalize``), the most common source of wrong numbers in peer libraries;
* attacks declare their threat constraint (``norm`` and ``config.eps``) so that the kernel,
  not the plugin, checks every returned batch against it.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import Tensor, nn

from advx.contract.errors import ConfigError, format_validation_error
from advx.contract.noise import ExampleNoise

Kind = Literal["attack", "defense", "model", "dataset", "threat"]
KINDS: tuple[Kind, ...] = ("dataset", "model", "defense", "threat", "attack")
#: the plugin a spec uses for a kind it names none of: no defense, the white-box attacker
DEFAULTS: dict[str, str] = {"defense": "none", "threat": "white-box"}


class PluginConfig(BaseModel):
    """Base of every plugin config: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


LABEL_MODE_PATTERN = re.compile(r"^(true|predicted|least-likely|random-target|target=\d+)$")


class AttackConfig(PluginConfig):
    """Fields every attack has. Subclasses override ``eps`` with their own default."""

    eps: float | None = Field(
        None, gt=0, description="perturbation budget in input units (norm given by the attack)"
    )
    label_mode: str = Field(
        "true",
        description=(
            "labels the loss is computed on: 'true' (ground truth), 'predicted' (the model's "
            "own top-1), 'least-likely' (targeted to the lowest-probability class), "
            "'target=K' (targeted to class K) or 'random-target' (a random wrong class)"
        ),
    )

    @field_validator("label_mode")
    @classmethod
    def _check_label_mode(cls, v: str) -> str:
        if not LABEL_MODE_PATTERN.match(v):
            raise ValueError(
                "must be 'true', 'predicted', 'least-likely', 'random-target' or 'target=K'"
            )
        return v

    @property
    def targeted(self) -> bool:
        return self.label_mode in ("least-likely", "random-target") or self.label_mode.startswith(
            "target="
        )


class DefenseConfig(PluginConfig):
    """Base of defense configs."""


class ModelConfig(PluginConfig):
    """Base of model configs."""

    normalize: bool = Field(
        True,
        description="prepend the dataset's mean/std normalisation as a layer of the model",
    )


class DatasetConfig(PluginConfig):
    """Base of dataset configs: options every dataset shares."""

    class_ratios: dict[int, float] | None = Field(
        None,
        description="keep this fraction of each listed class in the training split, e.g. {0 = 0.1}",
    )
    imbalance_seed: int = Field(0, description="seed of the class-ratio subsampling")

    def identity(self) -> dict[str, Any]:
        """The config values that select the data: a field marked ``json_schema_extra={"identity":
        False}`` (where the files are, whether to download or verify them) is left out, and
        ``imbalance_seed`` counts only with ``class_ratios``. Equal identities mean the same
        examples, so a cell or a training keyed by it is never recomputed for a trailing slash."""
        d = self.model_dump(mode="json")
        for name, f in type(self).model_fields.items():
            extra = f.json_schema_extra
            if isinstance(extra, dict) and extra.get("identity") is False:
                d.pop(name, None)
        if self.class_ratios is None:
            d["imbalance_seed"] = type(self).model_fields["imbalance_seed"].default
        return d

    @field_validator("class_ratios")
    @classmethod
    def _check_ratios(cls, v: dict[int, float] | None) -> dict[int, float] | None:
        if v is not None:
            for k, r in v.items():
                if not 0.0 <= r <= 1.0:
                    raise ValueError(f"ratio of class {k} must be within [0, 1], got {r}")
        return v


class Plugin(ABC):
    """Common base: a name, a kind, a validated config."""

    name: ClassVar[str]
    kind: ClassVar[Kind]
    Config: ClassVar[type[PluginConfig]] = PluginConfig

    def __init__(self, config: PluginConfig | None = None, **params: Any) -> None:
        if config is None:
            config = self.validate_config(params)
        elif params:
            raise TypeError("pass either a config object or keyword parameters, not both")
        elif not isinstance(config, self.Config):
            config = self.validate_config(config.model_dump())
        self.config = config

    @classmethod
    def validate_config(cls, params: dict[str, Any]) -> PluginConfig:
        """Validate ``params`` against ``Config``; raise a one-line ``ConfigError``."""
        try:
            return cls.Config.model_validate(params)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(f'{cls.kind} "{cls.name}"', exc)) from None

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump().items())
        return f"{type(self).__name__}({fields})"


class DatasetInfo(BaseModel):
    """What a model and an attack need to know of a dataset."""

    model_config = ConfigDict(frozen=True)

    name: str
    input_shape: tuple[int, ...] = Field(description="shape of one example, e.g. (1, 28, 28)")
    num_classes: int = Field(gt=1)
    bounds: tuple[float, float] = Field((0.0, 1.0), description="valid input range (pixel units)")
    mean: tuple[float, ...] | None = Field(None, description="per-channel mean, in input units")
    std: tuple[float, ...] | None = Field(None, description="per-channel std, in input units")
    class_names: tuple[str, ...] | None = None


class Dataset(Plugin):
    """A source of labelled examples in a declared input range.

    ``load(split)`` returns a ``torch.utils.data.Dataset`` whose items are ``(x, y)``
    with ``x`` a float tensor of ``info().input_shape`` inside ``info().bounds`` and ``y``
    an integer class. In-memory datasets should return a ``TensorDataset`` (the kernel
    slices it without per-item overhead).
    """

    kind: ClassVar[Kind] = "dataset"
    Config: ClassVar[type[PluginConfig]] = DatasetConfig

    @abstractmethod
    def info(self) -> DatasetInfo:
        """Shape, classes, bounds and normalisation statistics."""

    @abstractmethod
    def load(self, split: Literal["train", "test"]) -> torch.utils.data.Dataset:
        """The examples of ``split``."""

    def fingerprint(self, split: Literal["train", "test"] = "train") -> Any:
        """What identifies the files of ``split`` beyond the config (JSON-able), or ``None``.

        The training split's enters the key of every model trained on this dataset, so
        changed files retrain instead of reusing a model trained on other data; both enter
        every cell's key, so changed test files are evaluated again. File datasets return
        checksums of the files they read; a user folder, its file list with sizes and
        modification times; datasets fully determined by their config (generated,
        bundled) return None.
        """
        return None

    def identity(self) -> list[Any]:
        """What identifies the data a cell evaluates: name, the config values that select
        it (``DatasetConfig.identity``) and the fingerprints of both splits."""
        cfg = self.config.identity() if isinstance(self.config, DatasetConfig) else self.config.model_dump(mode="json")
        prints = {split: self.fingerprint(split) for split in ("train", "test")}
        return [self.name, cfg] + ([prints] if any(v is not None for v in prints.values()) else [])

    def test_size(self) -> int:
        """How many examples the test split holds (a ``samples`` beyond it selects them all)."""
        return len(self.load("test"))  # type: ignore[arg-type]


class Model(Plugin):
    """A classifier architecture: builds a fresh ``nn.Module`` sized from the dataset.

    The module returns logits (never probabilities). Models should subclass
    ``Classifier`` so that their fully connected hidden states are reachable.
    """

    kind: ClassVar[Kind] = "model"
    Config: ClassVar[type[PluginConfig]] = ModelConfig

    @abstractmethod
    def build(self, info: DatasetInfo) -> nn.Module:
        """A freshly initialised network for inputs of ``info.input_shape``."""

    @property
    def pretrained(self) -> bool:
        """Whether ``build`` returns the network with its final weights (read from a file).

        The kernel then evaluates the built network as it is, instead of training it as a
        base model: training a model that arrives trained would overwrite the weights under
        evaluation. Defenses that train (``ctx.train``) start from these weights (they
        fine-tune). Architectures advx trains keep the default, false.
        """
        return False


class Defense(Plugin):
    """Turns a trained model into a defended one.

    ``apply`` receives the trained base model and a ``DefenseContext`` through which it
    can train further models (cached like every training run, with a changed objective or
    data: adversarial training, distillation, bagging) and apply other defenses (so that
    defenses compose), and returns the module that is evaluated (preprocessing, an
    ensemble, a wrapper). The default returns the model unchanged.

    A defense that detects adversarial inputs gives the returned module a method
    ``detector_score(x) -> Tensor`` of shape ``(N,)``, higher meaning more likely
    adversarial; the kernel then records it per example and reports the detection ROC AUC.
    """

    kind: ClassVar[Kind] = "defense"
    Config: ClassVar[type[PluginConfig]] = DefenseConfig
    #: ``apply`` may train or fit models (a dry run says so); False for a defense that only wraps
    trains: ClassVar[bool] = True

    def apply(self, model: nn.Module, ctx: Any) -> nn.Module:
        return model

    @classmethod
    def operating_point(cls, config: dict[str, Any]) -> str | None:
        """How a detector's operating point is named in reports (i-defender: ``ID-95`` for
        ``keep = 95``), from its stored config; None: the generic "threshold"."""
        return None


class Attack(Plugin):
    """Crafts adversarial examples for a batch.

    ``perturb(model, x, y, bounds, targeted=False)`` returns a tensor like ``x``.
    When ``targeted`` is false, ``y`` are the labels to move away from (ground truth or
    the model's prediction); when true, ``y`` are the target classes to reach. The kernel
    resolves ``config.label_mode`` into ``y`` and ``targeted``, runs the attack on the
    model's device, and checks the result against ``norm``/``config.eps`` and ``bounds``.
    """

    kind: ClassVar[Kind] = "attack"
    Config: ClassVar[type[PluginConfig]] = AttackConfig
    #: the norm of the threat constraint, checked by the kernel on every returned batch
    norm: ClassVar[Literal["linf", "l2"]] = "linf"
    #: what the attack needs of the module it attacks: ``"gradients"`` (input gradients
    #: through the whole module; a cell whose module declares a non-differentiable part and
    #: whose threat model does not allow BPDA fails with an error saying so), or nothing
    #: (a black-box attack that only queries outputs)
    requires: ClassVar[frozenset[str]] = frozenset({"gradients"})
    supports_targeted: ClassVar[bool] = True
    #: whether the attack takes several steps (the sanity flags expect an iterative attack
    #: to be at least as strong as its single-step counterpart at the same budget)
    iterative: ClassVar[bool] = False
    #: name of the single-step attack this one iterates (``"fgsm"`` for BIM and PGD), if any
    single_step: ClassVar[str | None] = None
    #: set by the kernel for the duration of a call when the model the attack sees is a
    #: stand-in for the one scored (threat models ``transfer``, ``gray-box``, ``undefended``,
    #: ``member``): fooling it is not the goal, so an attack that returns the first iterate
    #: that fools the model it sees should instead run its whole schedule and return its
    #: strongest point (the final or highest-loss iterate), as the transfer literature does.
    #: Returning an earlier, barely-adversarial iterate makes transfer attacks weaker.
    surrogate: bool = False
    #: set by the kernel for the duration of a call when the module the attack sees declares
    #: random parts (a randomised defense, or the EOT view of one): a success that module
    #: shows is one draw's, and the scored model's own draw may not be fooled; also under
    #: ``[matrix] amp``, where the attack sees low-precision logits and scoring is float32
    random_view: bool = False

    @property
    def exits_early(self) -> bool:
        """Whether an example leaves the active batch once the module shows it broken, in this call.

        An evaluation at a fixed budget asks per example whether an adversarial point lies
        inside eps; once one is found, further passes on that example answer nothing, so
        attacks with an ``early_exit`` config field (default on) drop broken examples from
        their batch and return the point that broke them. That is safe only where "broken"
        as the attacked module shows it is "broken" as the scored model will see it: the
        module is the scored one, not a stand-in (``surrogate``: there the strongest point
        is wanted, not the first success), and its forward is deterministic (``random_view``:
        with a random defense, or EOT's average over its draws, a success can be one lucky
        draw, and stopping there would leave a weaker point than running on). Everywhere
        else the attack runs its whole schedule on every example; so does
        ``early_exit = false``, for studies of the loss trajectory. Outside the kernel the
        caller vouches for the module (``surrogate`` and ``random_view`` are false).
        """
        return bool(getattr(self.config, "early_exit", False)) and not self.surrogate and not self.random_view

    @property
    def eps(self) -> float | None:
        return getattr(self.config, "eps", None)

    @classmethod
    def min_classes(cls, config: PluginConfig) -> int:
        """The fewest classes a model must have for this attack with ``config`` (default 2).

        A loss that is undefined on fewer classes (the DLR loss compares the three or four
        largest logits) would crash mid-run, or worse, run and score nothing; the kernel
        reads this when a spec is planned and before ``evaluate`` runs anything, and
        refuses the combination in one line instead.
        """
        return 2

    @classmethod
    def traits(cls) -> dict[str, Any]:
        """What the attack declares, as stored with every result row (flags read this, never names)."""
        return {
            "norm": cls.norm,
            "requires": sorted(cls.requires),
            "supports_targeted": cls.supports_targeted,
            "iterative": cls.iterative,
            "single_step": cls.single_step,
        }

    def batch_info(self) -> dict[str, Tensor] | None:
        """Per-example information about the last batch (tensors of shape ``(N,)``), or None.

        Called by the kernel after each ``perturb``; the values are stored with the cell
        (``metrics.attack_info``), e.g. which attack of a suite broke each example.
        """
        return None

    def begin_batch(self, seed: int, examples: ExampleNoise | None = None) -> None:
        """Called by the kernel before each batch with a seed derived from the cell's seed and the
        batch's position, so random draws differ between batches yet do not depend on what ran
        before in the process (a resumed run equals an uninterrupted one); and with
        ``examples``, the batch's examples keyed by the cell's seed and their indices in the
        dataset (``noise``), so that draws taken from it do not depend on the batch at all."""
        self._batch_seed = seed
        self._examples = examples

    def noise(self, x: Tensor, seed: int = 0) -> ExampleNoise:
        """Per-example random numbers for the batch ``x`` (``ExampleNoise``), mixed with ``seed``
        (the attack's own seed config). Prefer it to ``generator``: what an example draws
        depends on the example alone, so a result does not depend on the batch size or on a
        split into shards (a PGD robust accuracy moved by 0.005 between batch sizes with
        per-batch starts). Inside the kernel the examples are keyed by the cell's seed and
        their dataset indices; outside it (or for a batch other than the kernel's), by the
        batch seed of ``begin_batch`` (0 if none) and their positions ``0..N-1`` in ``x``.
        """
        examples = getattr(self, "_examples", None)
        if examples is None or len(examples) != len(x):
            examples = ExampleNoise.of(getattr(self, "_batch_seed", None) or 0, torch.arange(len(x)))
        return examples.to(x.device).seeded(seed)

    def generator(self, device: torch.device | str, seed: int = 0) -> torch.Generator:
        """A ``torch.Generator`` on ``device`` for this batch's random draws (its draws depend on
        the batch: ``noise`` gives draws that do not).

        Seeded from ``seed`` (the attack's own seed config) mixed with the kernel's batch
        seed (see ``begin_batch``); outside the kernel, from ``seed`` alone.
        """
        batch = getattr(self, "_batch_seed", None)
        mixed = seed if batch is None else (seed * 1_000_003 + batch) % (2**63 - 1)
        return torch.Generator(device=device).manual_seed(mixed)

    @abstractmethod
    def perturb(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        bounds: tuple[float, float],
        targeted: bool = False,
    ) -> Tensor:
        """Adversarial examples for ``x`` (same shape, same device)."""


def input_gradient(output: Tensor, x: Tensor, retain_graph: bool = False) -> Tensor:
    """The gradient of the scalar ``output`` with respect to ``x``, as a tensor the caller owns.

    ``torch.autograd.grad`` may return a tensor that does not own its elements: behind a
    model whose first step is a reduction (RGB to grey, ``x.sum(1, keepdim=True) / 3``)
    the input gradient is a broadcast view with stride 0, and the first in-place step an
    attack takes on it (``grad.sign_()``) fails with "more than one element of the
    written-to tensor refers to a single memory location". Such a gradient is copied
    (one allocation, only for these layouts); any other is returned as autograd gave it.
    Attacks that modify their gradients in place should take them from here.
    """
    (g,) = torch.autograd.grad(output, x, retain_graph=retain_graph)
    if any(stride == 0 and size > 1 for stride, size in zip(g.stride(), g.shape)):
        g = g.contiguous()
    return g


def _key_names(keys: Any, n: int = 6) -> str:
    names = [repr(k) for k in list(keys)[:n]]
    return ", ".join(names) + (", ..." if len(list(keys)) > n else "")


def select_output(out: Any, output: str | int | None) -> Any:
    """The logits of a model's output: itself, or ``out[output]`` (a dict key, a tuple index)
    or ``out.output`` (an attribute of an output object), with a one-line ``ConfigError``
    naming what the output holds when ``output`` does not pick a tensor from it."""
    if output is None:
        if isinstance(out, Tensor):
            return out
        if isinstance(out, Mapping):
            raise ConfigError(f"output: the model returns a {type(out).__name__} (keys {_key_names(out.keys())}); set output to the key of its logits")
        if isinstance(out, (tuple, list)):
            raise ConfigError(f"output: the model returns a {type(out).__name__} of {len(out)}; set output to the index of its logits")
        raise ConfigError(f"output: the model returns a {type(out).__name__}, not a tensor; set output to the attribute holding its logits")
    if isinstance(out, Mapping):
        if output not in out:
            raise ConfigError(f"output: {output!r} is not a key of the model's output (keys {_key_names(out.keys())})")
        return out[output]
    if isinstance(out, (tuple, list)):
        if not isinstance(output, int) or not -len(out) <= output < len(out):
            raise ConfigError(f"output: the model returns a {type(out).__name__} of {len(out)}; {output!r} is not an index of it")
        return out[output]
    if isinstance(output, str) and hasattr(out, output):
        return getattr(out, output)
    raise ConfigError(f"output: the model returns a {type(out).__name__}, which has no {output!r}")


class OutputSelect(nn.Module):
    """A model that returns a dict, a tuple or an object, seen as one that returns its logits
    (``output``: the key, index or attribute of the logits; see ``select_output``)."""

    def __init__(self, model: nn.Module, output: str | int) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, x: Tensor) -> Tensor:
        return select_output(self.model(x), self.output)  # type: ignore[no-any-return]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as the first layer of a model.

    Keeping normalisation inside the model means attacks and budgets stay in pixel units.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:  # flat inputs (tabular)
            return (x - self.mean.flatten()) / self.std.flatten()
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """Base of built-in networks: ``forward`` gives logits, ``hidden_states`` the FC activations.

    The default ``hidden_states`` records, through forward hooks, the output of every
    fully connected layer but the last (the logits), before its activation; subclasses
    that want post-activation states (the built-in models do) override it.
    """

    def hidden_states(self, x: Tensor) -> dict[str, Tensor]:
        linears = [(n, m) for n, m in self.named_modules() if isinstance(m, nn.Linear)]
        out: dict[str, Tensor] = {}
        handles = []
        for n, m in linears[:-1]:
            handles.append(m.register_forward_hook(lambda _m, _i, o, n=n: out.__setitem__(n, o)))
        try:
            self(x)
        finally:
            for h in handles:
                h.remove()
        return out


class NormalizedModel(nn.Module):
    """A network behind a ``Normalize`` layer; forwards ``hidden_states`` too."""

    def __init__(self, normalize: Normalize, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))

    def hidden_states(self, x: Tensor) -> dict[str, Tensor]:
        return self.net.hidden_states(self.normalize(x))  # type: ignore[operator]
