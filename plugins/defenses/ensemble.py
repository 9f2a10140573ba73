"""``ensemble``: seed 002's defense, several classifiers whose softmax probabilities are averaged.

Members differ by ``kind``:

* ``random-init``: the cell's architecture, member i trained with the cell's training seed + i
  (trained apart, member 0 is therefore the undefended base model, loaded from the cache);
* ``mixed-architectures``: member i uses ``architectures[i % len]``, each entry either
  overrides of the cell's model config (default: the base network, one with more filters,
  one with an extra conv layer, as in seed 002) or a whole model table ``{name = ...}``;
* ``bagging``: member i is trained on its own bootstrap replicate (n draws with replacement
  from the n training examples, seeded by ``seed`` + the cell's training seed, and i);
* ``gaussian-noise``: member i is trained on its own copy of the training images with
  Gaussian noise of std ``noise_std`` added once (clipped to the valid range), so that the
  members see "similar but different training sets", as the paper puts it.

All kinds also vary the initialisation seed (the paper: "random initialization of the model
parameters is used in all methods"). ``member_defense`` applies another defense to every
member (seed 002 Table 4: bagging + adversarial training, bagging + distillation); each
member's defense trains with that member's seed and data, and the member's data enters the
cache key of everything the nested defense trains.

The module predicts with the mean of the members' softmax probabilities and returns
``log(mean probability)`` as its logits (computed as a logsumexp of log-softmaxes, which is
stable), so argmax, cross-entropy and every attack see one classifier whose loss is exactly
the ensemble's negative log-likelihood. Members of one architecture are stacked
(``torch.func.stack_module_state``) and evaluated in one ``vmap`` call; the ensemble
implements ``advx.Ensemble`` so that the ``member`` (Grad.1) and ``member-mean`` (Grad.2)
threat models can reach the members.

Members are trained one ``ctx.train`` at a time, each cached under its own key, so an
interrupted ensemble resumes member by member; with ``train_together`` (by default on a GPU)
the members of one architecture are trained as one stacked network (``ctx.train_together``),
cached under keys that name the group, and resumed group by group.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from advx import ConfigError, Defense, DefenseConfig, DefenseContext, Ensemble, architecture_signature, as_tensor_dataset, hookimpl, take

# -- the module -------------------------------------------------------------------------------


def stack_signature(module: nn.Module) -> Any:
    """What two modules must share to be evaluated as one vmapped call (the kernel's
    ``architecture_signature``, also what joint training stacks by); ``None``: never stacked."""
    if any(isinstance(m, Ensemble) for m in module.modules()):
        return None  # a nested ensemble is called as it is
    return architecture_signature(module)


class _MemberGroup(nn.Module):
    """Members of one architecture: their parameters stacked along a new first dimension.

    A group of one keeps its module as it is. Otherwise the stacked tensors are registered
    parameters and buffers of the group (so ``.to()``, ``state_dict()`` and ``eval()`` work
    as for any module), and the forward runs one ``vmap`` of ``functional_call`` on a
    parameterless template (on the meta device: every tensor is replaced at the call).
    """

    #: device types whose members run one after another instead of in one vmapped call
    #: (see ``forward``); a class attribute so that a test can run both paths on a CPU
    loop_devices: tuple[str, ...] = ("cpu",)

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.size = len(members)
        self.single = members[0] if self.size == 1 else None
        self._pnames: list[tuple[str, str]] = []
        self._bnames: list[tuple[str, str]] = []
        self._snames: list[tuple[str, str]] = []  # buffers shared by all members, stored once
        if self.single is not None:
            return
        template = copy.deepcopy(members[0]).to("meta")
        object.__setattr__(self, "_template", template)  # not a submodule: it holds no real tensors
        params, buffers = stack_module_state(members)
        for i, (name, t) in enumerate(params.items()):
            self.register_parameter(f"p{i}", nn.Parameter(t.detach().clone(), requires_grad=True))
            self._pnames.append((name, f"p{i}"))
        for i, (name, t) in enumerate(buffers.items()):
            if bool((t == t[:1]).all()):
                # the same in every member (a Normalize layer's mean/std): kept once and not
                # vmapped, so the input stays unbatched up to the first layer and the first
                # conv runs as one wide convolution instead of a grouped one (much slower on CPU)
                self.register_buffer(f"s{i}", t[0].detach().clone())
                self._snames.append((name, f"s{i}"))
            else:
                self.register_buffer(f"b{i}", t.detach().clone())
                self._bnames.append((name, f"b{i}"))

    def train(self, mode: bool = True) -> _MemberGroup:
        super().train(mode)
        if self.single is None:
            self._template.train(mode)
        return self

    def _tensors(self) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """(stacked parameters, stacked buffers, shared buffers), by the members' own names."""
        get = lambda names: {n: getattr(self, s) for n, s in names}  # noqa: E731
        return get(self._pnames), get(self._bnames), get(self._snames)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the group's members, shape ``(size, N, classes)``."""
        if self.single is not None:
            return self.single(x).unsqueeze(0)
        params, buffers, shared = self._tensors()
        template = self._template

        def call(p: dict[str, Tensor], b: dict[str, Tensor], xb: Tensor) -> Tensor:
            return functional_call(template, (p, {**b, **shared}), (xb,))

        if x.device.type in self.loop_devices:
            # On a CPU the members run one after another on views of the stacked tensors:
            # each member's convolution is already one full BLAS call, and a vmapped call
            # builds activations M times larger than one member's. With glibc malloc untuned
            # (``advx.evaluate``) one vmapped call over 10 mnist-cnn members was 2-4x the loop;
            # tuned (``advx.runtime.allocator``, as in every matrix run) it costs the same as the loop
            # (0.96-1.09x, benchmarks/results/ensemble-cpu.md), so the loop is never worse.
            # A GPU, where launch overhead dominates, gets all members in one call.
            return torch.stack(
                [call({n: t[j] for n, t in params.items()}, {n: t[j] for n, t in buffers.items()}, x) for j in range(self.size)]
            )
        # randomness="different": dropout in training mode draws a mask per member
        return vmap(call, in_dims=(0, 0, None), randomness="different")(params, buffers, x)

    def member(self, j: int) -> nn.Module:
        """Member ``j`` as a module whose tensors are views of the stacked ones (no copy)."""
        if self.single is not None:
            return self.single
        params, buffers, shared = self._tensors()
        device = next(iter(params.values())).device
        m = copy.deepcopy(self._template).to_empty(device=device)
        for name, t in list(params.items()) + list(buffers.items()) + list(shared.items()):
            owner, _, attr = name.rpartition(".")
            sub = m.get_submodule(owner) if owner else m
            if name in params:
                setattr(sub, attr, nn.Parameter(t[j].detach(), requires_grad=t.requires_grad))
            else:
                setattr(sub, attr, (t if name in shared else t[j]).detach())
        return m.train(self.training)


class StackedEnsemble(nn.Module, Ensemble):
    """Classifiers whose softmax probabilities are averaged; ``forward`` returns log(mean p).

    Members that share an architecture (same type, tensor shapes and settings) are grouped
    and each group is evaluated in one vectorised call; ``member_logits`` returns
    ``(members, N, classes)`` in member order.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 1:
            raise ConfigError("an ensemble needs at least one member")
        groups: list[list[int]] = []
        signatures: list[Any] = []
        for i, m in enumerate(members):
            sig = stack_signature(m)
            if sig is not None and sig in signatures:
                groups[signatures.index(sig)].append(i)
            else:
                signatures.append(sig)
                groups.append([i])
        self.groups = nn.ModuleList(_MemberGroup([members[i] for i in g]) for g in groups)
        flat = [i for g in groups for i in g]  # member index at each row of the concatenation
        self._where = [(gi, j) for gi, g in enumerate(groups) for j in range(len(g))]
        self._where = [self._where[flat.index(i)] for i in range(len(members))]
        self._reorder = None if flat == list(range(len(members))) else [flat.index(i) for i in range(len(members))]
        self._n = len(members)

    @property
    def num_members(self) -> int:
        return self._n

    def member(self, index: int) -> nn.Module:
        if not 0 <= index < self._n:
            raise IndexError(f"ensemble has {self._n} members, no member {index}")
        g, j = self._where[index]
        return self.groups[g].member(j)

    def member_logits(self, x: Tensor) -> Tensor:
        out = torch.cat([g(x) for g in self.groups]) if len(self.groups) > 1 else self.groups[0](x)
        if self._reorder is not None:
            out = out[torch.tensor(self._reorder, device=out.device)]
        return out

    def forward(self, x: Tensor) -> Tensor:
        logp = torch.log_softmax(self.member_logits(x), dim=-1)
        return torch.logsumexp(logp, dim=0) - math.log(self._n)


# -- training the members ------------------------------------------------------------------


class MemberContext(DefenseContext):
    """The context a member (and a defense nested in it) trains through.

    Its model, training config and training split are the member's; whatever it trains or
    fits gets the member's data (bootstrap replicate, noisy copy) added to its cache key, so
    that e.g. an adversarially trained member on replicate 3 never shares a checkpoint with
    adversarial training on the full training set.
    """

    def __init__(self, parent: DefenseContext, model, train_config, data_key: Any, data: Callable[[], Any] | None) -> None:
        super().__init__(**parent.inherited(model, train_config, data))
        self.data_key = data_key

    def _key(self, extra: Any) -> Any:
        return extra if self.data_key is None else {"member_data": self.data_key, "extra": extra}

    def train_request(self, model=None, train=None, extra_key=None, train_data=None, description=None):
        # ``train`` goes through ``train_request`` too: the member's data is keyed once, here
        return super().train_request(model, train, self._key(extra_key), train_data, description)

    def artifact(self, name, extra_key, compute):
        return super().artifact(name, self._key(extra_key), compute)


def bootstrap_replicate(data, seed: int):
    """n examples drawn with replacement from the n of ``data`` (a ``TensorDataset``)."""
    x, y = take(data, len(data))
    idx = torch.randint(len(y), (len(y),), generator=torch.Generator().manual_seed(seed))
    return as_tensor_dataset(x[idx], y[idx])


def noisy_copy(data, std: float, bounds: tuple[float, float], seed: int):
    """``data`` with Gaussian noise of ``std`` added once to every image, clipped to ``bounds``."""
    x, y = take(data, len(data))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return as_tensor_dataset((x + std * noise).clamp_(*bounds), y)


def _member_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


class EnsembleDefense(Defense):
    """Seed 002: members (random init, mixed architectures, bagging, Gaussian noise), mean softmax."""

    name: ClassVar[str] = "ensemble"

    class Config(DefenseConfig):
        members: int = Field(
            10,
            ge=1,
            le=1000,
            description=(
                "number of members (seed 002: 10); 1: member 0 alone, seed 002's \"single\" classifier of its kind "
                "(the same network, from the same cache entry, as member 0 of a larger ensemble of the kind)"
            ),
        )
        kind: Literal["random-init", "mixed-architectures", "bagging", "gaussian-noise"] = Field(
            "random-init", description="how members differ (all kinds also vary the initialisation seed)"
        )
        noise_std: float = Field(
            0.1, gt=0, description="gaussian-noise: std of the noise added to each member's training images (input units)"
        )
        architectures: list[dict[str, Any]] = Field(
            default_factory=lambda: [{}, {"filters": 64}, {"extra_conv": True}],
            min_length=1,
            description=(
                "mixed-architectures: member i uses entry i mod len; an entry is overrides of the cell's model "
                "config, or a model table {name = ..., ...}"
            ),
        )
        member_defense: dict[str, Any] | None = Field(
            None, description="a defense table applied to every member, e.g. {name = 'adversarial-training'}"
        )
        train_together: Literal["auto", "yes", "no"] = Field(
            "auto",
            description=(
                "train members of one architecture together, one vmapped step for all (advx.runtime.joint); auto: on a GPU, "
                "where one call replaces M. On a CPU it is 8-17% slower than training them apart (benchmarks/results/"
                "ensemble-train-cpu.md), and apart each member keeps its own checkpoint (shared with other ensembles, resumed "
                "member by member). Never with member_defense"
            ),
        )
        seed: int = Field(
            0,
            description=(
                "seed of the bootstrap replicates and of the training noise, added to the cell's training seed "
                "(so that a model trained with another seed also draws other replicates)"
            ),
        )

        @field_validator("member_defense")
        @classmethod
        def _named(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
            if v is not None and not isinstance(v.get("name"), str):
                raise ValueError("needs a 'name' (a defense plugin)")
            return v

    def member_model(self, ctx: DefenseContext, index: int):
        """The model plugin of member ``index``."""
        if self.config.kind != "mixed-architectures":
            return ctx.model
        entry = dict(self.config.architectures[index % len(self.config.architectures)])
        if "name" in entry:
            return ctx.create("model", str(entry.pop("name")), entry)
        return ctx.create("model", ctx.model.name, {**ctx.model.config.model_dump(), **entry})

    def member_context(self, ctx: DefenseContext, index: int) -> MemberContext:
        """Member ``index``'s model, training config (seed + index) and training data."""
        c = self.config
        train = ctx.train_config.model_copy(update={"seed": ctx.train_config.seed + index})
        # The data's seed follows the training seed: a spread over training seeds (or the
        # gray-box attacker's copy, trained with another seed) must not reuse one set of
        # replicates. With training seed 0 it is ``seed`` itself, as it always was.
        data_seed = c.seed + ctx.train_config.seed
        seed = _member_seed(data_seed, index)
        data_key: Any = None
        data = None
        if c.kind == "bagging":
            data_key = {"bagging": {"replicate": index, "seed": data_seed}}
            data = lambda: bootstrap_replicate(ctx.train_data, seed)  # noqa: E731
        elif c.kind == "gaussian-noise":
            data_key = {"gaussian-noise": {"member": index, "std": c.noise_std, "seed": data_seed}}
            data = lambda: noisy_copy(ctx.train_data, c.noise_std, ctx.info.bounds, seed)  # noqa: E731
        return MemberContext(ctx, self.member_model(ctx, index), train, data_key, data)

    def together(self, ctx: DefenseContext) -> bool:
        """Whether the members are trained together (``train_together``; see the field)."""
        c = self.config
        if c.member_defense is not None:
            return False  # a nested defense trains its member its own way
        return c.train_together == "yes" or (c.train_together == "auto" and ctx.device.type != "cpu")

    def apply(self, model, ctx):
        c = self.config
        mctxs = [self.member_context(ctx, i) for i in range(c.members)]
        whats = [f"ensemble {c.kind} member {i + 1}/{c.members}" for i in range(c.members)]
        if self.together(ctx):
            nets = ctx.train_together([m.train_request(description=w) for m, w in zip(mctxs, whats)])
        else:  # member by member, each defended before the next is trained
            nets = []
            for m, w in zip(mctxs, whats):
                net = m.train(description=w)
                nets.append(net if c.member_defense is None else m.defense(c.member_defense, net))
        return StackedEnsemble([net.to(ctx.device).eval() for net in nets]).to(ctx.device).eval()


@hookimpl
def advx_register_defenses():
    return [EnsembleDefense]
