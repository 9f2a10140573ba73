"""Sanity flags: each check fires on results that break it, and only then."""

from __future__ import annotations

import advx
from advx.analysis.checks import run_checks


REGISTRY = advx.Registry.discover()


def row(attack, eps, acc, threat="white-box", n=500, traits=None, **cfg):
    if traits is None:
        traits = REGISTRY.get("attack", attack).traits() if attack in REGISTRY.names("attack") else {}
    return {
        "status": "done",
        "dataset": "digits",
        "model": "mlp",
        "defense": "none",
        "threat": threat,
        "attack": f"{attack}(eps={eps})",
        "attack_config": {"name": attack, "eps": eps, "label_mode": "true", **cfg},
        "attack_traits": traits,
        "threat_config": {"name": threat.split("<")[0].split("(")[0]},
        # what the threat model declares, as the kernel stores it with every row
        "threat_traits": REGISTRY.get("threat", threat.split("<")[0].split("(")[0]).traits(),
        "robust_accuracy": acc,
        "n": n,
    }


def typed(rows):
    """Hand-written flat rows as the typed rows the checks read."""
    return [r if isinstance(r, advx.CellRow) else advx.CellRow.from_flat(r) for r in rows]


def checks(rows):
    return sorted(f.check for f in run_checks(typed(rows)))


def test_consistent_results_raise_no_flag():
    rows = [row("fgsm", 0.1, 0.7), row("fgsm", 0.2, 0.3), row("bim", 0.2, 0.1, steps=8),
            row("fgsm", 0.2, 0.6, threat="transfer<-mlp")]
    assert checks(rows) == []


def test_each_check_fires():
    assert checks([row("fgsm", 0.1, 0.3), row("fgsm", 0.2, 0.5)]) == ["eps-not-monotone"]
    assert checks([row("fgsm", 0.2, 0.3), row("pgd", 0.2, 0.6, steps=10)]) == ["iterative-weaker"]
    assert checks([row("fgsm", 0.2, 0.5), row("fgsm", 0.2, 0.2, threat="undefended")]) == ["weaker-knowledge-stronger"]


def test_checks_read_declarations_not_names():
    """A third-party attack declaring itself iterative over FGSM gets the same check as BIM/PGD;
    an attack named "pgd" that declares nothing gets none."""
    mine = {"norm": "linf", "iterative": True, "single_step": "fgsm"}
    assert checks([row("fgsm", 0.2, 0.3), row("my-iterative", 0.2, 0.6, traits=mine)]) == ["iterative-weaker"]
    assert checks([row("fgsm", 0.2, 0.3), row("pgd", 0.2, 0.6, traits={"iterative": False})]) == []
    # threat models declare whether they know less than the white-box attacker
    assert checks([row("fgsm", 0.2, 0.5), row("fgsm", 0.2, 0.2, threat="member(index=1)")]) == ["weaker-knowledge-stronger"]
    assert checks([row("fgsm", 0.2, 0.5), row("fgsm", 0.2, 0.2, threat="member-mean")]) == []


def test_differences_within_two_examples_are_ignored():
    assert checks([row("fgsm", 0.1, 0.300), row("fgsm", 0.2, 0.302)]) == []


def test_flags_on_a_real_matrix_from_the_store(tmp_path):
    spec = {
        "matrix": {"name": "flags", "samples": 200, "batch_size": 100, "cache_dir": str(tmp_path / "c")},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp", "train": {"epochs": 5}}],
        "attacks": [{"name": "fgsm", "eps": [0.05, 0.1, 0.2]}, {"name": "bim", "eps": 0.1, "alpha": 0.02, "steps": 10}],
    }
    advx.run_matrix(spec, store=tmp_path / "r.db")
    with advx.ResultStore(tmp_path / "r.db") as store:
        assert run_checks(store.cells()) == []  # an honest evaluation of an undefended model


def test_results_command_prints_flags(tmp_path, capsys):
    from advx.cli import main

    db = tmp_path / "r.db"
    with advx.ResultStore(db) as store:
        for i, r in enumerate([row("fgsm", 0.1, 0.3), row("fgsm", 0.2, 0.5)]):
            store.record(advx.CellRow.from_flat({**r, "cell_key": f"k{i}", "spec_name": "s"}))
    assert main(["results", str(db)]) == 0
    out = capsys.readouterr().out
    assert "1 sanity flag(s)" in out and "eps-not-monotone" in out


def test_flags_name_the_cells_that_raised_them():
    a, b = row("fgsm", 0.1, 0.3), row("fgsm", 0.2, 0.5)
    a["cell_key"], b["cell_key"] = "ka", "kb"
    (flag,) = run_checks(typed([a, b]))
    assert flag.cells == ("ka", "kb")


def test_auc_of_a_perfect_and_a_useless_detector():
    import torch

    from advx.analysis.metrics import roc_auc, roc_points

    clean, adv = torch.rand(500), torch.rand(500) + 1.0  # every adversarial example scores higher
    assert roc_auc(clean, adv) == 1.0
    same = torch.full((500,), 0.3)  # a constant score tells nothing
    assert roc_auc(same, same) == 0.5
    g = torch.Generator().manual_seed(0)
    assert abs(roc_auc(torch.rand(4000, generator=g), torch.rand(4000, generator=g)) - 0.5) < 0.02
    pts = roc_points(clean, adv)
    assert pts[0] == [0.0, 0.0] and [0.0, 1.0] in pts and pts[-1] == [1.0, 1.0] and len(pts) <= 101


def _with_classes(r, clean, counts, recalls=None):
    """``r`` with per-class counts, and per-class clean accuracies where ``recalls`` is given."""
    per = {str(c): {"n": n, **({} if recalls is None else {"clean_accuracy": recalls[c]})} for c, n in enumerate(counts)}
    return {**r, "clean_accuracy": clean, "details": {"per_class": per}}


MNIST_TEST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _one_answer(counts, cls, extra_right=0):
    """Per-class accuracies and accuracy of a model answering ``cls`` but for ``extra_right``
    inputs of other classes that it gets right."""
    others = sum(n for c, n in enumerate(counts) if c != cls)
    recalls = [1.0 if c == cls else extra_right / others for c in range(len(counts))]
    return (counts[cls] + extra_right) / sum(counts), recalls


def test_a_model_at_the_most_frequent_class_is_flagged_once_per_model():
    """Seed 002's network trained on PGD examples alone collapsed to one answer: clean 0.1135,
    the share of the digit 1 in MNIST's test set, and every attack 'left' 0.1135."""
    clean, recalls = _one_answer(MNIST_TEST, 1)
    collapsed = [_with_classes(row(a, 0.3, 0.1135, n=10000), clean, MNIST_TEST, recalls) for a in ("fgsm", "pgd")]
    flags = run_checks(typed(collapsed))
    assert [f.check for f in flags] == ["clean-at-chance"]
    msg = flags[0].message
    assert "0.1135" in msg and "mean per-class accuracy 0.1000" in msg and "2 cell(s)" in msg and len(flags[0].cells) == 0
    # a model that learned is not flagged
    learned = [0.99, 0.995, 0.98, 0.985, 0.99, 0.98, 0.985, 0.98, 0.975, 0.97]
    assert checks([_with_classes(row("fgsm", 0.3, 0.05, n=10000), 0.9866, MNIST_TEST, learned)]) == []


def test_a_model_that_answers_one_class_for_all_but_a_few_inputs_is_flagged():
    """Seeds 100 and 200 of the same training: "1" for every input but 3 and 10 others (clean
    0.1138 and 0.1145), a hair above the majority share that the plain accuracy is held to."""
    for extra in (3, 10):
        clean, recalls = _one_answer(MNIST_TEST, 1, extra)
        assert clean > 0.1135 + 2 / 10000  # the majority rule alone would let it through
        assert checks([_with_classes(row("fgsm", 0.3, 0.1135, n=10000), clean, MNIST_TEST, recalls)]) == ["clean-at-chance"]
    # a weak model that learned something is not: seed 002's rho-0 probe reached 0.36
    weak = [0.6, 0.8, 0.2, 0.3, 0.3, 0.1, 0.4, 0.4, 0.2, 0.3]
    assert checks([_with_classes(row("fgsm", 0.3, 0.1, n=10000), 0.36, MNIST_TEST, weak)]) == []
    # the margin is three standard errors of a guessing model: wider on a small test set
    small = [50] * 10
    assert checks([_with_classes(row("fgsm", 0.3, 0.1, n=500), 0.15, small, [0.15] * 10)]) == ["clean-at-chance"]
    assert checks([_with_classes(row("fgsm", 0.3, 0.1, n=500), 0.2, small, [0.2] * 10)]) == []


def test_mean_per_class_accuracy_judges_chance_on_imbalanced_data():
    """On 900/100 data, 0.90 plain accuracy is chance (always the majority), and so is 0.5 mean
    per-class accuracy however the plain accuracy comes out; a model right on both classes is not."""
    counts = [900, 100]
    assert checks([_with_classes(row("fgsm", 0.3, 0.5, n=1000), 0.90, counts, [1.0, 0.0])]) == ["clean-at-chance"]
    assert checks([_with_classes(row("fgsm", 0.3, 0.5, n=1000), 0.91, counts, [0.96, 0.55])]) == []
    # without per-class accuracies (older results): the majority share
    assert checks([_with_classes(row("fgsm", 0.3, 0.5, n=1000), 0.93, counts)]) == []
    assert checks([_with_classes(row("fgsm", 0.3, 0.5, n=1000), 0.90, counts)]) == ["clean-at-chance"]
    # rows without per-class counts (older results) are left alone
    assert checks([{**row("fgsm", 0.3, 0.1), "clean_accuracy": 0.1}]) == []


def _defended(defense, clean, acc, n=500, eps=0.3):
    return {**row("fgsm", eps, acc, n=n), "defense": defense, "defense_config": {"name": defense.split("(")[0]},
            "clean_accuracy": clean, "cell_key": f"{defense}-{acc}"}


def test_a_defense_that_costs_clean_accuracy_says_so():
    """Rotation by 180 degrees left 0.30 of the digits right, against 0.94 undefended: its robust
    accuracy means little without that cost beside it."""
    none = _defended("none", 0.94, 0.10)
    rotated = [_defended("rotation(angle=180)", 0.30, 0.25), _defended("rotation(angle=180)", 0.30, 0.28, eps=0.1)]
    flags = run_checks(typed([none, *rotated]))
    assert [f.check for f in flags] == ["defense-costs-accuracy"]
    assert flags[0].cells == ("rotation(angle=180)-0.25", "rotation(angle=180)-0.28")
    msg = flags[0].message
    assert "rotation(angle=180): clean accuracy 0.3000 against 0.9400 without the defense (-0.6400)" in msg
    assert "0.2500 to 0.2800 over 2 cell(s)" in msg
    # a cost within DEFENSE_COST (plus two examples' worth) is not flagged; one beyond it is
    from advx.analysis.checks import DEFENSE_COST

    assert checks([none, _defended("squeezing", 0.94 - DEFENSE_COST + 0.001, 0.5)]) == []
    assert checks([none, _defended("squeezing", 0.94 - DEFENSE_COST - 0.01, 0.5)]) == ["defense-costs-accuracy"]
    # compared only with the same model undefended, on as many examples
    assert checks([none, _defended("squeezing", 0.55, 0.5, n=200)]) == []
    assert checks([{**none, "model": "other"}, _defended("squeezing", 0.55, 0.5)]) == []


def test_defense_cost_on_a_real_matrix(tmp_path):
    """Rotation by 180 degrees and a median window far larger than the 8x8 digits (15: scipy's
    reflect, not an index error) both run, and the rotation's cost is named."""
    spec = {
        "matrix": {"name": "cost", "samples": 200, "batch_size": 200, "cache_dir": str(tmp_path / "c"), "diagnostics": False},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp", "train": {"epochs": 5}}],
        "defenses": [{"name": "none"}, {"name": "rotation", "angle": 180}, {"name": "median-filter", "size": 15}],
        "attacks": [{"name": "fgsm", "eps": 0.1}],
    }
    res = advx.run_matrix(spec)
    assert res.done == 3
    clean = {r["defense"]: r["clean_accuracy"] for r in res.rows}
    flagged = [f for f in run_checks(res.rows) if f.check == "defense-costs-accuracy"]
    assert any("rotation(angle=180.0): clean accuracy" in f.message for f in flagged)
    assert clean["none"] - clean["rotation(angle=180.0)"] > 0.3
