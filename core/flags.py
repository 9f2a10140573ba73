"""Sanity flags over finished cells: the checks of an honest evaluation that results allow.

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
  ``DEFENSE_COST`` below that of the same model undefended (its ``none`` cells on as many
  examples): the robustness it reports is bought with that cost, which a robust accuracy
  alone does not show (rotating MNIST digits by 180 degrees leaves 0.30 of them right,
  1-bit squeezing 0.55, against 0.94 undefended, and neither is at chance);

and four that each cell measures while it runs (``advx.diagnostics``, stored in the row's
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

Flags read what attacks and threat models declare (stored with every row as
``attack_traits`` and ``threat_config``), never plugin names, so a third-party attack gets
the same checks as the built-ins.

A flag is a place to look, not a verdict; each says which cells disagree and by how much.
Differences smaller than two examples' worth of accuracy are ignored.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from .threats import less_knowledge


#: the checks ``sanity_flags`` runs, by the name its flags carry
CHECKS = (
    "eps-not-monotone",
    "iterative-weaker",
    "weaker-knowledge-stronger",
    "unbounded-not-zero",
    "gradient-free-stronger",
    "clean-at-chance",
    "defense-costs-accuracy",
    "zero-gradients",
    "random-forward-without-eot",
    "not-converged",
    "silent-success",
)
#: an unbounded attack should leave at most this accuracy
UNBOUNDED_MAX_ACCURACY = 0.05
#: share of probe inputs with zero or non-finite gradients that raises a flag
ZERO_GRADIENT_SHARE = 0.10
#: clean accuracy a defense may cost before it is flagged: above the sampling noise of a
#: comparison on a few hundred examples, below the cost of defenses that change what the
#: model sees (adversarial training costs CIFAR-10 models about 0.08; a 180-degree rotation
#: cost MNIST 0.64), so that every such cost is named beside the robustness it buys
DEFENSE_COST = 0.05


@dataclass(frozen=True)
class Flag:
    check: str
    message: str
    cells: tuple[str, ...] = ()  # keys of the cells that raised it (a report marks them)

    def __str__(self) -> str:
        return f"[{self.check}] {self.message}"


def _keys(*rows: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(r["cell_key"]) for r in rows if r.get("cell_key"))


def _cfg(row: dict[str, Any], key: str) -> dict[str, Any]:
    v = row.get(key)
    if isinstance(v, str):
        return json.loads(v)
    return dict(v or {})


def _tol(*rows: dict[str, Any]) -> float:
    n = min(int(r.get("n") or 1) for r in rows)
    return 2.0 / max(n, 1)


def _at_chance(r: dict[str, Any]) -> str | None:
    """Why the row's model is no better than chance on its clean examples, or ``None``.

    Chance is 1/K for the mean per-class accuracy (a model guessing with any fixed
    distribution over the K classes present gets exactly that on average), with three
    standard errors of such a guesser as the margin: each class's accuracy is a proportion
    of its n_c examples, of variance at most 1/(4 n_c), so the mean's standard error is at
    most sqrt(sum 1/(4 n_c)) / K (0.005 for MNIST's test set, 0.02 for digits'). Rows
    without per-class accuracies fall back on the most frequent class's share.
    """
    per = [c for c in (_cfg(r, "metrics").get("per_class") or {}).values() if int(c.get("n") or 0) > 0]
    clean = r.get("clean_accuracy")
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


def sanity_flags(rows: list[dict[str, Any]], samples: Any = None) -> list[Flag]:
    """Flags for the finished cells in ``rows`` (result rows of one or more matrices).

    ``samples(cell_key) -> records`` (e.g. ``ResultStore.samples``) enables the per-example
    comparison of ``gradient-free-stronger``.
    """
    done = [r for r in rows if r.get("status") == "done" and r.get("robust_accuracy") is not None]
    flags: list[Flag] = []
    place = lambda r: f"{r['dataset']} / {r['model']} / {r['defense']} / {r['threat']}"  # noqa: E731

    # 1. budget monotonicity within one attack's eps sweep
    sweeps: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in done:
        cfg = _cfg(r, "attack_config")
        if cfg.get("eps") is None:
            continue
        rest = json.dumps({k: v for k, v in cfg.items() if k != "eps"}, sort_keys=True)
        sweeps[(place(r), rest)].append(r)
    for (where, _), cells in sweeps.items():
        cells.sort(key=lambda r: _cfg(r, "attack_config")["eps"])
        for a, b in zip(cells, cells[1:]):
            if b["robust_accuracy"] > a["robust_accuracy"] + _tol(a, b):
                flags.append(
                    Flag(
                        "eps-not-monotone",
                        f"{where}: {b['attack']} leaves accuracy {b['robust_accuracy']:.4f}, higher than "
                        f"{a['attack']} at a smaller eps ({a['robust_accuracy']:.4f})",
                        cells=_keys(a, b),
                    )
                )

    # 2. iterative at least as strong as its declared single-step counterpart at equal eps
    by_place: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in done:
        by_place[place(r)].append(r)
    for where, cells in by_place.items():
        single = {}
        for r in cells:
            cfg = _cfg(r, "attack_config")
            single[(cfg.get("name"), cfg.get("eps"), cfg.get("label_mode"))] = r
        for r in cells:
            cfg, traits = _cfg(r, "attack_config"), _cfg(r, "attack_traits")
            counterpart = traits.get("single_step")
            ref = single.get((counterpart, cfg.get("eps"), cfg.get("label_mode")))
            if traits.get("iterative") and counterpart and ref is not None:
                if r["robust_accuracy"] > ref["robust_accuracy"] + _tol(r, ref):
                    flags.append(
                        Flag(
                            "iterative-weaker",
                            f"{where}: {r['attack']} leaves accuracy {r['robust_accuracy']:.4f}, higher than "
                            f"its single step {ref['attack']} at the same eps ({ref['robust_accuracy']:.4f}): too few steps or masked gradients",
                            cells=_keys(r, ref),
                        )
                    )

    # 3. less knowledge must not mean a stronger attack
    by_attack: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in done:
        by_attack[(r["dataset"], r["model"], r["defense"], r["attack"])][r["threat"]] = r
    for (d, m, df, a), threats in by_attack.items():
        wb = threats.get("white-box")
        if wb is None:
            continue
        for name, r in threats.items():
            weaker = less_knowledge(_cfg(r, "threat_config").get("name"))
            if weaker and r["robust_accuracy"] < wb["robust_accuracy"] - _tol(r, wb):
                flags.append(
                    Flag(
                        "weaker-knowledge-stronger",
                        f"{d} / {m} / {df} / {a}: the {name} attacker leaves accuracy {r['robust_accuracy']:.4f}, "
                        f"lower than the white-box one ({wb['robust_accuracy']:.4f}): white-box gradients may be masked",
                        cells=_keys(r, wb),
                    )
                )
    # 4. unbounded attacks with full knowledge reach (near) zero accuracy
    for r in done:
        cfg, threat = _cfg(r, "attack_config"), _cfg(r, "threat_config").get("name")
        if "eps" in cfg and cfg["eps"] is None and not less_knowledge(threat):
            if r["robust_accuracy"] > UNBOUNDED_MAX_ACCURACY + _tol(r):
                flags.append(
                    Flag(
                        "unbounded-not-zero",
                        f"{place(r)}: the unbounded attack {r['attack']} leaves accuracy {r['robust_accuracy']:.4f} "
                        f"(expected <= {UNBOUNDED_MAX_ACCURACY}): too few steps, or it cannot follow the model's gradients",
                        cells=_keys(r,),
                    )
                )

    # 5. gradient-free attacks must not beat gradient attacks of the same threat constraint
    by_constraint: dict[tuple, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: {"free": [], "grad": []})
    for r in done:
        cfg, traits = _cfg(r, "attack_config"), _cfg(r, "attack_traits")
        if cfg.get("eps") is None or "requires" not in traits:
            continue
        kind = "grad" if "gradients" in traits["requires"] else "free"
        by_constraint[(place(r), traits.get("norm"), cfg["eps"])][kind].append(r)
    for (where, norm, eps), g in by_constraint.items():
        for free in g["free"]:
            for grad in g["grad"]:
                beats = free["robust_accuracy"] < grad["robust_accuracy"] - _tol(free, grad)
                extra = ""
                if samples is not None:
                    a, b = samples(free["cell_key"]), samples(grad["cell_key"])
                    if len(a["idx"]) and len(a["idx"]) == len(b["idx"]):
                        only = int(((a["adv_pred"] != a["label"]) & (b["adv_pred"] == b["label"])).sum())
                        if only > max(2, 0.02 * len(a["idx"])):
                            beats = True
                            extra = f"; it breaks {only} examples the gradient attack left unbroken"
                if beats:
                    flags.append(
                        Flag(
                            "gradient-free-stronger",
                            f"{where}: gradient-free {free['attack']} leaves accuracy {free['robust_accuracy']:.4f}, "
                            f"gradient attack {grad['attack']} {grad['robust_accuracy']:.4f} ({norm} eps={eps:g}){extra}: "
                            "gradients may be masked",
                            cells=_keys(free, grad),
                        )
                    )

    # 6. a model no better than chance has learned nothing to be robust with
    at_chance: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in done:
        why = _at_chance(r)
        if why is not None:
            at_chance[(r["dataset"], r["model"], r["defense"], why)].append(r)
    for (d, m, df, why), cells in at_chance.items():
        flags.append(
            Flag(
                "clean-at-chance",
                f"{d} / {m} / {df}: {why}: the model has not learned, and the robust accuracy of its {len(cells)} "
                "cell(s) says nothing about robustness",
                cells=_keys(*cells),
            )
        )

    # 7. a defense that costs clean accuracy says so, against the same model undefended
    undefended: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    defended: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in done:
        if r.get("clean_accuracy") is None:
            continue
        if (_cfg(r, "defense_config").get("name") or r["defense"]) == "none":
            undefended[(r["dataset"], r["model"], r.get("n"))].append(r)
        else:
            defended[(r["dataset"], r["model"], r["defense"], r.get("n"))].append(r)
    for (d, m, df, n), cells in defended.items():
        refs = undefended.get((d, m, n))
        if not refs:
            continue
        base = sum(r["clean_accuracy"] for r in refs) / len(refs)
        clean = sum(r["clean_accuracy"] for r in cells) / len(cells)
        if base - clean > DEFENSE_COST + _tol(*cells, *refs):
            robust = sorted(r["robust_accuracy"] for r in cells)
            span = f"{robust[0]:.4f}" if robust[0] == robust[-1] else f"{robust[0]:.4f} to {robust[-1]:.4f}"
            flags.append(
                Flag(
                    "defense-costs-accuracy",
                    f"{d} / {m} / {df}: clean accuracy {clean:.4f} against {base:.4f} without the defense "
                    f"({clean - base:+.4f}); its robust accuracy ({span} over {len(cells)} cell(s)) is bought with that cost",
                    cells=_keys(*cells),
                )
            )

    # 8-11. what each cell measured while it ran
    for r in done:
        diag = _cfg(r, "metrics").get("diagnostics") or {}
        traits = _cfg(r, "attack_traits")
        where = f"{place(r)} / {r['attack']}"
        grads = diag.get("gradients") or {}
        bad = (grads.get("zero_share") or 0) + (grads.get("nonfinite_share") or 0)
        if "gradients" in traits.get("requires", ["gradients"]) and bad > ZERO_GRADIENT_SHARE:
            flags.append(
                Flag(
                    "zero-gradients",
                    f"{where}: {grads.get('zero_share', 0):.0%} of probe inputs have an all-zero loss gradient and "
                    f"{grads.get('nonfinite_share', 0):.0%} a NaN or infinite one: gradients are masked or broken",
                    cells=_keys(r,),
                )
            )
        if diag.get("random_forward") and (diag.get("eot") or 1) == 1:
            flags.append(
                Flag(
                    "random-forward-without-eot",
                    f"{where}: the model's forward pass is random but the attack used no EOT; set eot on the threat "
                    "model (or declare the randomness as an advx.InputTransform) before trusting this number",
                    cells=_keys(r,),
                )
            )
        conv = diag.get("convergence") or {}
        if "success_doubled" in conv:
            gain = conv["success_doubled"] - conv["success"]
            if gain > max(2, 0.1 * conv["n"]):
                flags.append(
                    Flag(
                        "not-converged",
                        f"{where}: with {2 * conv['steps']} steps instead of {conv['steps']} the attack fools "
                        f"{conv['success_doubled']} of {conv['n']} sampled examples instead of {conv['success']}",
                        cells=_keys(r,),
                    )
                )
        if diag.get("silent_success"):
            flags.append(
                Flag(
                    "silent-success",
                    f"{where}: {diag['silent_success']} examples were fooled inside the budget at some iterate but "
                    "returned not fooled: the attack should keep its best iterate",
                    cells=_keys(r,),
                )
            )
    return flags
