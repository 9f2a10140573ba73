"""Optimality (AttackBench): areas between each attack's robust-accuracy curve and the
per-example best, on a hand-made example whose values are computed by hand below."""

from __future__ import annotations

import math

import pytest
import torch

from advx.analysis.optimality import optimality, optimality_groups, robust_on_grid
from advx.analysis.rows import CellRow

# Four examples, budgets 0.1 and 0.2; example 3 is misclassified clean.
CORRECT = torch.tensor([True, True, True, False])
A = torch.tensor([[1, 1], [1, 0], [1, 1], [0, 0]], dtype=torch.bool)  # robust flags at 0.1, 0.2
B = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=torch.bool)  # breaks example 2 at 0.1 only


def test_values_computed_by_hand():
    """With eps 0 (the clean accuracy 0.75) the curves are rho_A = 0.75, 0.75, 0.5 and rho_B =
    0.75, 0.5, 0.5. Per example, the best: example 0 broken at 0.2 (B), 1 at 0.2 (A), 2 at 0.1
    (B) and so at 0.2 too, though no attack broke it there: rho* = 0.75, 0.5, 0. Trapezoids of
    width 0.1 over a span of 0.2: A (0.75 + 0.625) / 2 = 0.6875, B (0.625 + 0.5) / 2 = 0.5625,
    best (0.625 + 0.25) / 2 = 0.4375."""
    out = optimality(CORRECT, {"A": A, "B": B}, [0.1, 0.2])
    auc, best, gap, opt = out["A"]
    assert (auc, best, gap) == pytest.approx((0.6875, 0.4375, 0.25))
    assert opt == pytest.approx(0.4375 / 0.6875)
    auc, best, gap, opt = out["B"]
    assert (auc, best, gap) == pytest.approx((0.5625, 0.4375, 0.125))
    assert opt == pytest.approx(0.4375 / 0.5625)


def test_an_attack_that_is_the_best_everywhere_scores_one_and_budgets_must_increase():
    out = optimality(CORRECT, {"A": A, "A again": A.clone()}, [0.1, 0.2])
    assert out["A"][3] == 1.0 and out["A"][2] == 0.0
    with pytest.raises(ValueError, match="increasing"):
        optimality(CORRECT, {"A": A}, [0.2, 0.1])


def test_minimum_norm_attacks_are_robust_where_their_norm_exceeds_eps():
    d = torch.tensor([0.15, math.inf, 0.05, 0.0])
    assert robust_on_grid(CORRECT, d, [0.1, 0.2]).tolist() == [[True, False], [True, True], [False, False], [False, False]]


def _row(key, name, eps, norm="linf", **cfg):
    ident = {p: p for p in ("dataset", "model", "defense", "threat", "examples")}
    config = {"name": name, **({} if eps is None else {"eps": eps}), **cfg}
    return CellRow(
        cell_key=key, status="done", dataset="d", model="m", defense="none", threat="white-box", attack=name,
        identity=ident, attack_config=config, attack_traits={"norm": norm}, metrics={"robust_accuracy": 0.5, "forwards_per_sample": 3.0},
    )


def _samples(flags_or_norm, adv_norm=None):
    label = torch.tensor([1, 1, 1, 1])
    clean = torch.where(CORRECT, label, torch.zeros_like(label))
    if adv_norm is None:  # robust flags -> predictions
        adv = torch.where(flags_or_norm, label, torch.zeros_like(label))
        norms = torch.zeros(4)
    else:
        adv = torch.where(torch.isfinite(adv_norm) & CORRECT, torch.zeros_like(label), label)
        adv = torch.where(CORRECT, adv, torch.zeros_like(label))
        norms = torch.where(torch.isfinite(adv_norm), adv_norm, torch.zeros(4))
    return {"idx": torch.tensor([3, 2, 1, 0]).flip(0), "label": label, "clean_pred": clean, "adv_pred": adv, "linf": norms, "l2": norms}


def test_groups_from_cells_sweeps_and_minimum_norm_together():
    """Two sweeps (A, B) and a minimum-norm attack (M, norms 0.15, inf, 0.05) on one place and
    norm: the grid is the sweeps' (0.1, 0.2), M's flags come from its records' norms, and an
    attack at one eps only (fgsm) is not a curve and is not in the group."""
    rows = [_row("a1", "pgd", 0.1), _row("a2", "pgd", 0.2), _row("b1", "apgd-ce", 0.1), _row("b2", "apgd-ce", 0.2),
            _row("m", "deepfool", None), _row("f", "fgsm", 0.1)]
    recs = {"a1": _samples(A[:, 0]), "a2": _samples(A[:, 1]), "b1": _samples(B[:, 0]), "b2": _samples(B[:, 1]),
            "m": _samples(None, torch.tensor([0.15, math.inf, 0.05, 0.0])), "f": _samples(A[:, 0])}
    [(place, norm, grid, table, left)] = optimality_groups(rows, recs.__getitem__)
    assert norm == "linf" and grid == [0.1, 0.2] and not left
    got = {r.attack: r for r in table}
    assert set(got) == {"pgd", "apgd-ce", "deepfool"}
    # M: flags [[1,0],[1,1],[0,0]] -> rho_M = 0.75, 0.5, 0.25; with M the best is unchanged
    # (it breaks nothing A and B did not), so best_auc stays 0.4375
    assert got["pgd"].auc == pytest.approx(0.6875) and got["pgd"].best_auc == pytest.approx(0.4375)
    assert got["deepfool"].auc == pytest.approx((0.625 + 0.375) / 2)
    assert got["apgd-ce"].forwards_per_sample == 3.0 and got["pgd"].cells == 2
    assert table[0].optimality >= table[-1].optimality


def test_a_sweep_missing_a_budget_of_the_group_is_named_and_left_out():
    rows = [_row("a1", "pgd", 0.1), _row("a2", "pgd", 0.2), _row("b1", "apgd-ce", 0.1), _row("b2", "apgd-ce", 0.2),
            _row("c1", "bim", 0.1), _row("c3", "bim", 0.3)]
    recs = {k: _samples(A[:, 0]) for k in ("a1", "a2", "b1", "b2", "c1", "c3")}
    [(_, _, grid, table, left)] = optimality_groups(rows, recs.__getitem__)
    assert grid == [0.1, 0.2] and {r.attack for r in table} == {"pgd", "apgd-ce"}
    assert len(left) == 1 and left[0].startswith("bim")
    assert got_none(rows[:2] + rows[4:], recs)  # pgd and bim share one budget: no group


def got_none(rows, recs):
    return optimality_groups(rows, recs.__getitem__) == []


def test_results_and_report_show_the_optimality_of_a_sweep(tmp_path, capsys, tiny):
    """A run that sweeps eps with two attacks: ``advx results --optimality`` and the report list
    both with the values ``optimality_groups`` computes from the stored records."""
    import advx
    from advx.cli import main
    from advx.store.results import ResultStore

    db = tmp_path / "r.db"
    attacks = [{"name": "fgsm", "eps": [0.05, 0.1, 0.2]}, {"name": "bim", "eps": [0.05, 0.1, 0.2], "alpha": 0.02, "steps": 3}]
    advx.run_matrix(tiny(attacks=attacks), store=db)
    with ResultStore(db, readonly=True) as store:
        [(_, norm, grid, table, left)] = optimality_groups(store.cells(), store.samples)
    assert norm == "linf" and grid == [0.05, 0.1, 0.2] and not left and {r.attack for r in table} == {"fgsm", "bim"}
    assert all(0 < r.optimality <= 1 and r.gap >= 0 for r in table)
    assert main(["results", str(db), "--optimality"]) == 0
    out = capsys.readouterr().out
    assert "optimality" in out and f"{table[0].optimality:.3f}" in out and f"{table[-1].gap:.4f}" in out
    assert main(["report", str(db), "--format", "md", "--tables-only", "-o", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    assert "Optimality of the attacks" in text and f"{table[-1].optimality:.3f}" in text
