"""Optimality of attacks, as AttackBench scores them (Cinà, Rony et al., "AttackBench: Evaluating
Gradient-based Attacks for Adversarial Examples", AAAI 2025), from the per-example records.

An attack's **robust-accuracy curve** rho_a(eps) is the share of examples it leaves correctly
classified at budget eps. The **per-example best** rho*(eps) is the share that *no* attack of
the group broke at eps or at any smaller budget (a point found inside a smaller ball is inside
every larger one): the tightest robust accuracy the group's attacks together establish. The
attack's shortfall is the area between its curve and the best one over [0, eps_max]:

    gap(a) = (1 / eps_max) * integral_0^eps_max (rho_a(eps) - rho*(eps)) d eps   (>= 0)

in units of robust accuracy (the mean excess over the budgets), and its **optimality** is
the ratio of the areas under the curves,

    optimality(a) = integral rho* / integral rho_a   (in (0, 1]; 1: the attack is the best everywhere;
                                                      1 where both areas are 0)

AttackBench compares attacks at a fixed budget of 2,000 forward+backward passes; here each
cell's own settings set its cost (``forwards_per_sample``/``backwards_per_sample`` beside it).
We did not find the paper's text here to check its exact normalisation: the definitions above
are the ones implemented and tested (``tests/core/analysis/test_optimality.py``, a hand-made
example computed by hand).

Curves come from two kinds of cells, grouped by the evaluated model and examples (the place:
dataset, model, defense, threat, examples, seed) and the norm:

* **fixed-budget cells that sweep eps** (one attack with the same settings at several eps): the
  attack's robust flag per example at each of its eps;
* **minimum-norm cells** (no eps: DeepFool, CW, FAB without early exit, ...): per example, the
  norm of the perturbation where it fools the model (``linf``/``l2`` column by the attack's
  norm), robust at eps exactly when that norm exceeds eps.

The curves are evaluated on one grid: eps 0 (the clean accuracy) and the budgets the group's
sweeps share (the widest sweeps first; a sweep that would leave fewer than two shared budgets
is left out of its group, its curve unknown there, and named in the result); a group of
minimum-norm attacks only gets 100 equal steps up to the largest per-example best norm.
Areas: the trapezoid rule on the grid.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from advx.analysis.groups import place_groups
from advx.analysis.rows import CellRow

#: relative tolerance of a minimum-norm attack's norm against a budget (float noise)
_REL = 1e-6


@dataclass(frozen=True)
class OptimalityRow:
    """One attack of a group: the mean robust accuracy over [0, eps_max] (its curve's area over
    eps_max), the best curve's, their difference (``gap``) and their ratio (``optimality``)."""

    attack: str
    auc: float
    best_auc: float
    gap: float
    optimality: float
    cells: int
    forwards_per_sample: float | None = None
    backwards_per_sample: float | None = None


def robust_on_grid(correct: Tensor, norms: Tensor, grid: Sequence[float]) -> Tensor:
    """``(N, K)`` robust flags of a minimum-norm attack on ``grid``: correct on the clean input and
    no adversarial point of norm at most eps (``norms``: ``inf`` where none was found)."""
    g = torch.tensor(list(grid), dtype=torch.float64)
    return correct[:, None] & (norms.double()[:, None] > g[None, :] * (1 + _REL))


def optimality(correct: Tensor, curves: Mapping[str, Tensor], grid: Sequence[float]) -> dict[str, tuple[float, float, float, float]]:
    """``{attack: (auc, best_auc, gap, optimality)}`` for per-example robust flags on one grid.

    ``correct``: ``(N,)`` bool, right on the clean input; ``curves``: ``(N, K)`` bool per attack,
    robust at each eps of ``grid`` (``K`` increasing budgets > 0). eps 0 is added with the clean
    flags. The best curve takes, per example, no attack breaking it at this eps or a smaller
    one. Areas by the trapezoid rule, divided by the largest eps (mean robust accuracy).
    """
    eps = torch.tensor([0.0, *grid], dtype=torch.float64)
    if len(eps) < 2 or not bool((eps[1:] > eps[:-1]).all()):
        raise ValueError(f"optimality needs increasing budgets above 0, got {list(grid)}")
    span = float(eps[-1])
    width = eps[1:] - eps[:-1]

    def area(flags: Tensor) -> float:  # flags (N, K + 1) -> mean robust accuracy over [0, eps_max]
        rho = flags.double().mean(0)
        return float(((rho[1:] + rho[:-1]) * width).sum() / 2 / span)

    full = {a: torch.cat((correct[:, None], c.bool()), 1) for a, c in curves.items()}
    broken = torch.zeros_like(next(iter(full.values())))
    for f in full.values():
        broken |= ~f
    best = ~(broken.int().cummax(1).values.bool())  # broken at a smaller eps: broken here too
    best_auc = area(best)
    out = {}
    for a, f in full.items():
        auc = area(f)
        out[a] = (auc, best_auc, auc - best_auc, best_auc / auc if auc > 0 else 1.0)
    return out


def _family(row: CellRow) -> str:
    cfg = {k: v for k, v in row.attack_config.items() if k != "eps"}
    return json.dumps(cfg, sort_keys=True, default=str)


def _labels(families: Mapping[str, list[CellRow]]) -> dict[str, str]:
    """A label per family: its attack name, with the settings that tell it from families of the same name."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for fam, cells in families.items():
        by_name[cells[0].attack_config.get("name", cells[0].attack)].append(fam)
    out = {}
    for name, fams in by_name.items():
        cfgs = {f: json.loads(f) for f in fams}
        differ = sorted({k for f in fams for k in cfgs[f] if len({json.dumps(cfgs[g].get(k), default=str) for g in fams}) > 1})
        for f in fams:
            extra = ", ".join(f"{k}={cfgs[f].get(k)}" for k in differ if k != "name")
            out[f] = f"{name}({extra})" if extra else name
    return out


def _flags(samples: Mapping[str, Tensor], order: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(correct, adversarial, position) of a cell's records in the order of ``order`` (example indices)."""
    pos = {int(i): n for n, i in enumerate(samples["idx"].tolist())}
    at = torch.tensor([pos[int(i)] for i in order])
    label = samples["label"][at]
    return samples["clean_pred"][at] == label, samples["adv_pred"][at] != label, at


def optimality_groups(
    rows: Sequence[CellRow], samples: Callable[[str], Mapping[str, Tensor]]
) -> list[tuple[str, str, list[float], list[OptimalityRow], list[str]]]:
    """``(place, norm, grid, rows, left out)`` per group of finished cells of one place and norm
    that sweeps eps (an attack at two budgets or more) or has minimum-norm cells, with at least
    two attacks; ``samples(cell_key)`` reads a cell's per-example records."""
    out = []
    for place, norm, cells in place_groups(rows, lambda r: r.attack_traits.get("norm", "?"), lambda r: r.full_knowledge):
        families: dict[str, list[CellRow]] = defaultdict(list)
        for c in cells:
            families[_family(c)].append(c)
        sweeps = {f: cs for f, cs in families.items() if all(c.eps is not None for c in cs) and len({c.eps for c in cs}) >= 2}
        minimum = {f: cs for f, cs in families.items() if all(c.eps is None for c in cs)}
        if len(sweeps) + len(minimum) < 2:
            continue
        result = _group(sweeps, minimum, norm, samples)
        if result is not None:
            grid, table, left = result
            out.append((place, norm, grid, table, left))
    return out


def _group(sweeps, minimum, norm, samples):
    names = _labels({**sweeps, **minimum})
    first = next(iter({**sweeps, **minimum}.values()))[0]
    order = samples(first.cell_key)["idx"].sort().values
    def key(e: float) -> float:  # budgets equal up to float noise are one
        return float(f"{e:.6g}")

    eps_of = {f: {key(c.eps): c for c in cs} for f, cs in sweeps.items()}
    shared: set[float] | None = None
    left = []
    for fam in sorted(eps_of, key=lambda f: (-len(eps_of[f]), names[f])):  # the widest sweeps first
        both = set(eps_of[fam]) if shared is None else shared & set(eps_of[fam])
        if len(both) >= 2:
            shared = both
        else:
            left.append(f"{names[fam]}: shares fewer than two budgets with the group's other sweeps")
    grid = sorted(shared or ())
    correct = None
    curves: dict[str, Tensor] = {}
    cells_of: dict[str, list[CellRow]] = {}
    for fam, cs in sweeps.items():
        if not set(grid) <= set(eps_of[fam]):
            continue
        cols = []
        for g in grid:
            ok, adv, _ = _flags(samples(eps_of[fam][g].cell_key), order)
            correct = ok if correct is None else correct
            cols.append(ok & ~adv)
        curves[names[fam]] = torch.stack(cols, 1)
        cells_of[names[fam]] = [eps_of[fam][g] for g in grid]
    norms: dict[str, Tensor] = {}
    for fam, cs in minimum.items():
        c = cs[0]
        s = samples(c.cell_key)
        ok, adv, at = _flags(s, order)
        correct = ok if correct is None else correct
        d = s["linf" if norm == "linf" else "l2"][at].double()
        norms[names[fam]] = torch.where(adv & ok, d, torch.full_like(d, math.inf))
        cells_of[names[fam]] = cs
    if correct is None or len(curves) + len(norms) < 2:
        return None
    if not grid:  # minimum-norm attacks only: 100 steps up to the largest per-example best norm
        best = torch.stack(list(norms.values()), 1).amin(1)
        finite = best[torch.isfinite(best)]
        top = float(finite.max()) if len(finite) else 0.0
        if top <= 0:
            return None
        grid = [top * (k + 1) / 100 for k in range(100)]
    for name, d in norms.items():
        curves[name] = robust_on_grid(correct, d, grid)
    values = optimality(correct, curves, grid)
    table = []
    for name, (auc, best_auc, gap, opt) in values.items():
        cs = cells_of[name]
        fwd = [c.metric("forwards_per_sample") for c in cs]
        bwd = [c.metric("backwards_per_sample") for c in cs]
        table.append(OptimalityRow(
            name, auc, best_auc, gap, opt, len(cs),
            max(fwd) if all(v is not None for v in fwd) else None, max(bwd) if all(v is not None for v in bwd) else None,
        ))
    table.sort(key=lambda r: (-r.optimality, r.attack))
    return grid, table, left


OPTIMALITY_HEADERS = (
    "dataset / model / defense / threat", "norm", "budgets", "attack", "mean robust accuracy",
    "per-example best", "gap", "optimality", "passes / example (fwd+bwd)",
)


def optimality_table(groups: Sequence[tuple[str, str, list[float], list[OptimalityRow], list[str]]]) -> tuple[list[list[str]], list[str]]:
    """The rows of ``optimality_groups`` as text (``OPTIMALITY_HEADERS``; the CLI's and the
    report's one table), and the notes on sweeps left out."""
    body, notes = [], []
    for place, norm, grid, table, left in groups:
        budgets = f"0-{grid[-1]:g} ({len(grid)} budgets)" if len(grid) > 5 else ", ".join(f"{g:g}" for g in grid)
        for r in table:
            passes = "-" if r.forwards_per_sample is None else f"{r.forwards_per_sample + (r.backwards_per_sample or 0.0):.0f}"
            body.append([place, norm, budgets, r.attack, f"{r.auc:.4f}", f"{r.best_auc:.4f}", f"{r.gap:.4f}", f"{r.optimality:.3f}", passes])
        notes += [f"{place} ({norm}): {s}" for s in left]
    return body, notes
