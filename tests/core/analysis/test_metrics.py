"""Robust accuracy as the field defines it (RobustBench, AutoAttack): an example counts only if it
is classified correctly both clean and under attack; the accuracy on the adversarial inputs alone
keeps its own name."""

from __future__ import annotations

import torch

from advx.analysis.metrics import summarize


def records(label, clean, adv):
    n = len(label)
    return {
        "label": torch.tensor(label), "clean_pred": torch.tensor(clean), "adv_pred": torch.tensor(adv),
        "target": torch.full((n,), -1), "adv_top5": torch.ones(n, dtype=torch.long),
        "linf": torch.zeros(n), "l2": torch.zeros(n),
        "clean_score": torch.full((n,), float("nan")), "adv_score": torch.full((n,), float("nan")),
        "clean_rejected": torch.full((n,), -1), "adv_rejected": torch.full((n,), -1),
    }


def test_a_weak_attack_that_turns_wrong_answers_right_is_not_robustness():
    # 10 examples: 8 right clean; the "attack" breaks 1 of them and fixes both wrong ones
    label = [0] * 10
    clean = [0] * 8 + [1, 1]
    adv = [1] + [0] * 7 + [0, 0]
    m = summarize(records(label, clean, adv))
    assert abs(m["clean_accuracy"] - 0.8) < 1e-6
    assert abs(m["adversarial_accuracy"] - 0.9) < 1e-6  # above clean: what the old number said
    assert abs(m["robust_accuracy"] - 0.7) < 1e-6 and m["robust_accuracy"] <= m["clean_accuracy"]  # correct clean and under attack
    assert abs(m["success_rate"] - 1 / 8) < 1e-9
