"""Sanity checks over finished cells: the checks of an honest evaluation that results allow.

Each check is one function declared with ``@check(name)`` (as metrics are with
``@metric``), its docstring saying what it catches; it reads typed rows (``CellRow``) and
returns ``Flag``s. Third-party packages add checks through the ``advx_register_checks``
hook; ``run_checks`` runs the built-in ones and those. Rows are grouped by what
identifies their cells (``CellRow.identity``), never by display labels: two models that
differ only in training are two groups, and a flag names what tells them apart.


Carlini et al. ("On Evaluating Adversarial Robustness", 2019) list sanity tests whose
failure means the evaluation, not the model, is broken; three of them need nothing but
the results of a matrix, so advx runs them after every ``advx run`` and on demand
(``advx results DB``):

* ``eps-not-monotone``: a larger budget of the same attack must not leave the model *more*
  accurate;
* ``iterative-weaker``: an iterative attack must be at least as strong as the single-step
  attack it declares as its counterpart (``Attack.single_step``: FGSM for BIM and PGD) at
  the same eps and label mode;
* ``weaker-knowledge-stronger``: an attacker who knows less (a threat model declaring
  ``less_knowledge``: transfer, undefended, gray-box, one ensemble member) must not beat
  the white-box attacker, or the white-box gradients are masked;
* ``unbounded-not-zero``: an unbounded (minimum-norm) attack with full knowledge must drive
  accuracy to near zero (at most 5%), or it stopped too early or cannot follow the model;
* ``gradient-free-stronger``: a gradient-free attack (one that declares ``requires`` empty:
  Square, random noise) must not beat a gradient attack of the same norm and eps, overall
  or on examples the gradient attack left unbroken, or the gradients are masked;

* ``clean-at-chance``: the model is no better than chance on the clean examples: its mean
  per-class clean accuracy (balanced accuracy, from the per-class results) is within three
  standard errors of 1/K, what a model guessing with any fixed distribution over the K
  classes gets, however imbalanced the data (without per-class accuracies: its clean
  accuracy is no better than always answering the most frequent class). It has not learned
  (a collapsed training), and every robust accuracy measured on it, about its clean
  accuracy since nothing is left to break, says nothing about robustness. Mean per-class
  accuracy also catches a model that answers one class for all but a few inputs, whose
  plain accuracy sits a hair above the majority share;
* ``defense-costs-accuracy``: a defense leaves the model's clean accuracy more than
  ``DEFENSE_COST`` below that of the same model undefended (its cells without a defense on
  the same examples): the robustness it reports is bought with that cost, which a robust
  accuracy alone does not show (rotating MNIST digits by 180 degrees leaves 0.30 of them
  right, 1-bit squeezing 0.55, against 0.94 undefended, and neither is at chance);

and four that each cell measures while it runs (``advx.analysis.diagnostics``, stored in the row's
``metrics.diagnostics``):

* ``zero-gradients``: more than 10% of the probe inputs have an all-zero, NaN or infinite
  loss gradient through the attacked module (the loss is the cross-entropy, whatever the
  attack's own loss: a margin attack such as ``cw-l2`` may still move inputs where it is
  zero, as on seed 002's bagging + distillation ensemble under ``member-mean``);
* ``random-forward-without-eot``: the evaluated model's forward pass is random but the
  attack used no EOT (set ``eot`` on the threat model, or declare the randomness with
  ``advx.InputTransform.randomized`` so the default applies);
* ``not-converged``: the attack with twice its steps, on 32 examples, finds clearly more
  adversarial examples (more than 2 and more than 10% of them);
* ``silent-success``: the attack had fooled examples inside the budget at some iterate and
  returned them not fooled (it should keep the best iterate).

* ``detector-false-positives``: a detector rejects far more clean inputs than its operating
  point allows (its clean false-positive rate), so "accuracy with rejection" measures a
  detector that rejects everything.

Checks read what attacks and threat models declare (stored with every row as
``attack_traits`` and ``threat_traits``), never plugin names, so a third-party attack or
threat model gets the same checks as the built-ins.

A flag is a place to look, not a verdict; each says which cells disagree and by how much.
Differences smaller than two examples' worth of accuracy are ignored.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from advx.analysis.groups import PLACE_PARTS as _PLACE
from advx.analysis.groups import place_labels
from advx.analysis.rows import CellRow
from advx.contract.interfaces import DEFAULTS

#: an unbounded attack should leave at most this accuracy
UNBOUNDED_MAX_ACCURACY = 0.05
#: share of probe inputs with zero or non-finite gradients that raises a flag
ZERO_GRADIENT_SHARE = 0.10
#: clean accuracy a defense may cost before it is flagged: above the sampling noise of a
#: comparison on a few hundred examples, below the cost of defenses that change what the
#: model sees (adversarial training costs CIFAR-10 models about 0.08; a 180-degree rotation
#: cost MNIST 0.64), so that every such cost is named beside the robustness it buys
DEFENSE_COST = 0.05
#: a detector rejecting more than this share of clean inputs (beyond its declared operating
#: point, where it has one) makes "accuracy with rejection" meaningless
DETECTOR_MAX_FPR = 0.5


@dataclass(frozen=True)
class Flag:
    """One place to look: which check, what it saw, and the keys of the cells concerned."""

    check: str
    message: str
    cells: tuple[str, ...] = ()  # keys of the cells that raised it (a report marks them)

    def __str__(self) -> str:
        return f"[{self.check}] {self.message}"


@dataclass
class CheckContext:
    """What a check may use besides the rows: per-example records (when the store is at hand)."""

    samples: Callable[[str], dict[str, Any]] | None = None
    _labels: dict[str, str] = field(default_factory=dict)

    def place(self, row: CellRow) -> str:
        """The row's place label, with what tells it apart from another place of the same label."""
        return self._labels.get(row.cell_key, row.place())


@dataclass(frozen=True)
class CheckDef:
    """A declared sanity check: ``fn(rows, ctx)`` yields flags over the finished rows."""

    name: str
    fn: Callable[[list[CellRow], CheckContext], Iterable[Flag]]
    description: str = ""

    def __call__(self, rows: list[CellRow], ctx: CheckContext) -> list[Flag]:
        return list(self.fn(rows, ctx))


def check(name: str) -> Callable[[Callable[[list[CellRow], CheckContext], Iterable[Flag]]], CheckDef]:
    """Declare a sanity check called ``name``; its docstring's first line describes it.

    A third-party package returns its checks from the ``advx_register_checks`` hook.
    """

    def deco(fn: Callable[[list[CellRow], CheckContext], Iterable[Flag]]) -> CheckDef:
        doc = (fn.__doc__ or "").strip()
        return CheckDef(name, fn, doc.splitlines()[0] if doc else "")

    return deco


# -- grouping by identity -------------------------------------------------------------------------

def _keys(*rows: CellRow) -> tuple[str, ...]:
    return tuple(r.cell_key for r in rows if r.cell_key)


def _tol(*rows: CellRow) -> float:
    n = min(r.n or 1 for r in rows)
    return 2.0 / max(n, 1)


def _ra(r: CellRow) -> float:
    return float(r.robust_accuracy)  # type: ignore[arg-type]


def _attack_rest(r: CellRow) -> str:
    return json.dumps({k: v for k, v in r.attack_config.items() if k != "eps"}, sort_keys=True, default=str)


# -- the checks -------------------------------------------------------------------------------------


@check("eps-not-monotone")
def eps_not_monotone(rows: list[CellRow], ctx: CheckContext) -> Iterable[Flag]:
    """A larger budget of the same attack must not leave the model more accurate."""
    sweeps: dict[tuple, list[CellRow]] = defaultdict(list)
    for r in rows:
        if r.eps is not None:
            sweeps[(r.part(*_PLACE), _attack_rest(r))].append(r)
    for cells in sweeps.values():
        cells.sort(key=lambda r: r.eps)  # type: ignore[arg-type, return-value]
        for a, b in zip(cells, cells[1:]):
            if _ra(b) > _ra(a) + _tol(a, b):
                yield Flag(
                    "eps-not-monotone",
                    f"{ctx.place(a)}: {b.attack} leaves accuracy {_ra(b):.4f}, higher than "
                    f"{a.attack} at a smaller eps ({_ra(a):.4f})",
                    cells=_keys(a, b),
                )


@check("iterative-weaker")
def iterative_weaker(rows: list[CellRow], ctx: CheckContext) -> Iterable[Flag]:
    """An iterative attack must be at least as strong as its declared single-step counterpart at equal eps."""
    by_place: dict[tuple, list[CellRow]] = defaultdict(list)
    for r in rows:
        by_place[r.part(*_PLACE)].append(r)
    for cells in by_place.values():
        single = {(r.attack_config.get("name"), r.eps, r.attack_config.get("label_mode")): r for r in cells}
        for r in cells:
            counterpart = r.attack_traits.get("single_step")
            ref = single.get((counterpart, r.eps, r.attack_config.get("label_mode")))
            if r.attack_traits.get("iterative") and counterpart and ref is not None and _ra(r) > _ra(ref) + _tol(r, ref):
                yield Flag(
                    "iterative-weaker",
                    f"{ctx.place(r)}: {r.attack} leaves accuracy {_ra(r):.4f}, higher than its single step "
                    f"{ref.attack} at the same eps ({_ra(ref):.4f}): too few steps or masked gradients",
                    cells=_keys(r, ref),
                )


@check("weaker-knowledge-stronger")
def weaker_knowledge_stronger(rows: list[CellRow], ctx: CheckContext) -> Iterable[Flag]:
    """An attacker who knows less (a threat model declaring ``less_knowledge``) must not beat the
    strongest full-knowledge attacker of the same attack on the same cells, or the full-knowledge
    gradients are masked. The reference is found by the threat models' declared traits, whatever
    their settings (``eot``, ``bpda``)."""
    groups: dict[tuple, list[CellRow]] = defaultdict(list)
    for r in rows:
        groups[(*r.part("dataset", "model", "defense", "attack", "examples", "seed"),)].append(r)
    for cells in groups.values():
        full = [r for r in cells if r.full_knowledge]
        if not full:
            continue
        ref = min(full, key=_ra)
        for r in cells:
            if r.less_knowledge and _ra(r) < _ra(ref) - _tol(r, ref):
                yield Flag(
                    "weaker-knowledge-stronger",
                    f"{ctx.place(r)} / {r.attack}: the {r.threat} attacker leaves accuracy {_ra(r):.4f}, lower than the "
                    f"{ref.threat} one ({_ra(ref):.4f}): full-knowledge gradients may be masked",
                    cells=_keys(r, ref),
                )


@check("unbounded-not-zero")
def unbounded_not_zero(rows: list[CellRow], ctx: CheckContext) -> Iterable[Flag]:
    """An unbounded (minimum-norm) attack with full knowledge must drive accuracy to near zero."""
    for r in rows:
        if "eps" in r.attack_config and r.eps is None and not r.less_knowledge and _ra(r) > UNBOUNDED_MAX_ACCURACY + _tol(r):
            yield Flag(
                "unbounded-not-zero",
                f"{ctx.place(r)}: the unbounded attack {r.attack} leaves accuracy {_ra(r):.4f} "
                f"(expected <= {UNBOUNDED_MAX_ACCURACY}): too few steps, or it cannot follow the model's gradients",
                cells=_keys(r),
            )


@check("gradient-free-stronger")
def gradient_free_stronger(rows: list[CellRow], ctx: CheckContext) -> Iterable[Flag]:
    """A gradient-free attack must not beat a gradient attack of the same norm and eps, overall or
    on examples the gradient attack left unbroken, or the gradients are masked."""
    by_constraint: dict[tuple, dict[str, list[CellRow]]] = defaultdict(lambda: {"free": [], "grad": []})
    for r in rows:
        if r.eps is None or "requires" not in r.attack_traits:
            continue
        kind = "grad" if "gradients" in r.attack_traits["requires"] else "free"
        by_constraint[(r.part(*_PLACE), r.attack_traits.get("norm"), r.eps)][kind].append(r)
    for (_, norm, eps), g in by_constraint.items():
        for free in g["free"]:
            for grad in g["grad"]:
                beats = _ra(free) < _ra(grad) - _tol(free, grad)
                extra = ""
                if ctx.samples is not None:
                    a, b = ctx.samples(free.cell_key), ctx.samples(grad.cell_key)
                    if len(a["idx"]) and len(a["idx"]) == len(b["idx"]):
                        only = int(((a["adv_pred"] != a["label"]) & (b["adv_pred"] == b["label"])).sum())
                        if only > max(2, 0.02 * len(a["idx"])):
                            beats = True
                            extra = f"; it breaks {only} examples the gradient attack left unbroken"
                if beats:
                    yield Flag(
                        "gradient-free-stronger",
                        f"{ctx.place(free)}: gradient-free {free.attack} leaves accuracy {_ra(free):.4f}, "
                        f"gradient attack {grad.attack} {_ra(grad):.4f} ({norm} eps={eps:g}){extra}: gradients may be masked",
                        cells=_keys(free, grad),
                    )


def _at_chance(r: CellRow) -> str | None:
    """Why the row's model is no better than chance on its clean examples, or ``None``.

    Chance is 1/K for the mean per-class accuracy (a model guessing with any fixed
    distribution over the K classes present gets exactly that on average), with three
    standard errors of such a guesser as the margin: each class's accuracy is a proportion
    of its n_c examples, of variance at most 1/(4 n_c), so the mean's standard error is at
    most sqrt(sum 1/(4 n_c)) / K (0.005 for MNIST's test set, 0.02 for digits'). Rows
    without per-class accuracies fall back on the most frequent class's share.
    """
    per = [c for c in (r.details.get("per_class") or {}).values() if int(c.get("n") or 0) > 0]
    clean = r.clean_accuracy
    if len(per) < 2 or clean is None:
        return None
    counts = [int(c["n"]) for c in per]
    recalls = [c.get("clean_accuracy") for c in per]
    if all(v is not None for v in recalls):
        k = len(per)
        balanced = sum(recalls) / k
        margin = 3.0 * math.sqrt(sum(1.0 / (4 * n) for n in counts)) / k
        if balanced <= 1.0 / k + margin:
            return (
                f"clean accuracy {clean:.4f}, mean per-class accuracy {balanced:.4f}, is no better than chance "
                f"(1/{k} = {1.0 / k:.4f}, + {margin:.4f} for three standard errors of a guessing model)"
            )
        return None
    share = max(counts) / sum(counts)
    if clean <= share + _tol(r):
        return (
            f"clean accuracy {clean:.4f} is no better than always answering the most frequent class "
            f"({share:.4f} of the evaluated examples)"
        )
    return None


@check("clean-at-chance")
def clean_at_chance(rows: list[CellRow], ctx: CheckContext) -> Iterable[Flag]:
    """The model is no better than chance on the clean examples: its robust accuracies say nothing."""
    at_chance: dict[tuple, list[CellRow]] = defaultdict(list)
    for r in rows:
        why = _at_chance(r)
        if why is not None:
            at_chance[(*r.part("dataset", "model", "defense", "examples"), why)].append(r)
    for (*_, why), cells in at_chance.items():
        r = cells[0]
        where = ctx.place(r).rsplit(" / ", 1)[0] if ctx.place(r).count(" / ") >= 3 else ctx.place(r)
        yield Flag(
            "clean-at-chance",
            f"{where}: {why}: the model has not learned, and the robust accuracy of its {len(cells)} "
            "cell(s) says nothing about robustness",
            cells=_keys(*cells),
        )


@check("defense-costs-accuracy")
def defense_costs_accuracy(rows: list[CellRow], ctx: CheckContext) -> Iterable[Flag]:
    """A defense costs clean accuracy against the same model undefended, on the same examples."""
    undefended: dict[tuple, list[CellRow]] = defaultdict(list)
    defended: dict[tuple, list[CellRow]] = defaultdict(list)
    for r in rows:
        if r.clean_accuracy is None:
            continue
        same = (*r.part("dataset", "model", "examples"), r.n)  # the same examples, so as many of them
        if r.defense_config.get("name", r.defense) == DEFAULTS["defense"]:
            undefended[same].append(r)
        else:
            defended[(*same, *r.part("defense"))].append(r)
    for key, cells in defended.items():
        refs = undefended.get(key[:4])
        if not refs:
            continue
        base = sum(r.clean_accuracy for r in refs) / len(refs)  # type: ignore[misc]
        clean = sum(r.clean_accuracy for r in cells) / len(cells)  # type: ignore[misc]
        if base - clean > DEFENSE_COST + _tol(*cells, *refs):
            robust = sorted(_ra(r) for r in cells)
            span = f"{robust[0]:.4f}" if robust[0] == robust[-1] else f"{robust[0]:.4f} to {robust[-1]:.4f}"
            where = ctx.place(cells[0]).rsplit(" / ", 1)[0]
            yield Flag(
                "defense-costs-accuracy",
                f"{where}: clean accuracy {clean:.4f} against {base:.4f} without the defense ({clean - base:+.4f}); "
                f"its robust accuracy ({span} over {len(cells)} cell(s)) is bought with that cost",
                cells=_keys(*cells),
            )


def _diag(r: CellRow) -> dict[str, Any]:
    return r.details.get("diagnostics") or {}


@check("zero-gradients")
def zero_gradients(rows: list[CellRow], ctx: CheckContext) -> Iterable[Flag]:
    """More than 10% of the probe inputs have an all-zero, NaN or infinite loss gradient through the attacked module."""
    for r in rows:
        grads = _diag(r).get("gradients") or {}
        bad = (grads.get("zero_share") or 0) + (grads.get("nonfinite_share") or 0)
        if "gradients" in r.attack_traits.get("requires", ["gradients"]) and bad > ZERO_GRADIENT_SHARE:
            yield Flag(
                "zero-gradients",
                f"{ctx.place(r)} / {r.attack}: {grads.get('zero_share', 0):.0%} of probe inputs have an all-zero loss gradient and "
                f"{grads.get('nonfinite_share', 0):.0%} a NaN or infinite one: gradients are masked or broken",
                cells=_keys(r),
            )


@check("random-forward-without-eot")
def random_forward_without_eot(rows: list[CellRow], ctx: CheckContext) -> Iterable[Flag]:
    """The evaluated model's forward pass is random but the attack used no EOT."""
    for r in rows:
        diag = _diag(r)
        if diag.get("random_forward") and (diag.get("eot") or 1) == 1:
            yield Flag(
                "random-forward-without-eot",
                f"{ctx.place(r)} / {r.attack}: the model's forward pass is random but the attack used no EOT; set eot on the "
                "threat model (or declare the randomness as an advx.InputTransform) before trusting this number",
                cells=_keys(r),
            )


@check("not-converged")
def not_converged(rows: list[CellRow], ctx: CheckContext) -> Iterable[Flag]:
    """The attack with twice its steps, on 32 examples, finds clearly more adversarial examples."""
    for r in rows:
        conv = _diag(r).get("convergence") or {}
        if "success_doubled" in conv and conv["success_doubled"] - conv["success"] > max(2, 0.1 * conv["n"]):
            yield Flag(
                "not-converged",
                f"{ctx.place(r)} / {r.attack}: with {2 * conv['steps']} steps instead of {conv['steps']} the attack fools "
                f"{conv['success_doubled']} of {conv['n']} sampled examples instead of {conv['success']}",
                cells=_keys(r),
            )


@check("silent-success")
def silent_success(rows: list[CellRow], ctx: CheckContext) -> Iterable[Flag]:
    """The attack had fooled examples inside the budget at some iterate and returned them not fooled.

    Not where the cell measured a random forward pass: there an "iterate that fooled" may be
    one lucky draw of the randomness, not a success the attack lost, and
    ``random-forward-without-eot`` says what to do."""
    for r in rows:
        diag = _diag(r)
        if diag.get("silent_success") and not diag.get("random_forward"):
            yield Flag(
                "silent-success",
                f"{ctx.place(r)} / {r.attack}: {diag['silent_success']} examples were fooled inside the budget at some iterate but "
                "returned not fooled: the attack should keep its best iterate",
                cells=_keys(r),
            )


@check("detector-false-positives")
def detector_false_positives(rows: list[CellRow], ctx: CheckContext) -> Iterable[Flag]:
    """A detector rejects most clean inputs: accuracy with rejection then measures nothing."""
    seen: set[tuple] = set()
    for r in rows:
        fpr = r.metric("detection_fpr")
        if fpr is None or fpr <= DETECTOR_MAX_FPR:
            continue
        place = r.part("dataset", "model", "defense", "examples")
        if place in seen:
            continue
        seen.add(place)
        yield Flag(
            "detector-false-positives",
            f"{ctx.place(r)}: the detector rejects {fpr:.0%} of clean inputs (false-positive rate; at most "
            f"{DETECTOR_MAX_FPR:.0%} expected): its accuracy with rejection ({r.metric('accuracy_with_rejection')}) "
            "and detection AUC say little; fit its threshold again",
            cells=_keys(r),
        )


#: the built-in checks, in the order their flags are listed
CHECKS: tuple[CheckDef, ...] = tuple(v for v in list(globals().values()) if isinstance(v, CheckDef))
CHECK_NAMES: tuple[str, ...] = tuple(c.name for c in CHECKS)


def run_checks(
    rows: Sequence[CellRow],
    samples: Callable[[str], dict[str, Any]] | None = None,
    extra: Sequence[CheckDef] = (),
) -> list[Flag]:
    """Flags for the finished cells in ``rows`` (of one or more matrices): every built-in check
    and the ``extra`` ones (e.g. ``Registry.checks``, from third-party packages).

    ``samples(cell_key) -> records`` (e.g. ``ResultStore.samples``) enables the per-example
    comparison of ``gradient-free-stronger``.
    """
    done = [r for r in rows if r.status == "done" and r.robust_accuracy is not None]
    ctx = CheckContext(samples, place_labels(done))
    flags: list[Flag] = []
    names = set()
    for c in (*CHECKS, *extra):
        if c.name in names:
            continue
        names.add(c.name)
        flags += c(done, ctx)
    return flags
