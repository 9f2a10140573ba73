"""Results that do not depend on the batch size (issue 27, item 5).

``batch_size`` is not in a cell's key, so a cell's numbers must not move with it: random
starts, restarts, Square's search and the random-target label mode draw per example
(``Attack.noise``, keyed by the cell's seed and the example's index in the dataset), and
every randomised attack gives the same broken examples, at the same points, for any
batch size and any split of the examples into shards. The points are compared to 1e-5:
the draws are bit-identical, but the model's own kernels may round a batch of 6 a hair
differently from a batch of 64 (measured: at most 1.2e-7, on 3 of 120 L2 examples).
"""

from __future__ import annotations

import pytest
import torch

import advx
from advx.runtime.crafting import CraftOptions, craft

REG = advx.Registry.discover()

RANDOMISED = [
    ("pgd", {"eps": 0.1, "alpha": 0.02, "steps": 5, "restarts": 2}),
    ("pgd-l2", {"eps": 0.8, "steps": 5, "restarts": 2}),
    ("apgd-ce", {"eps": 0.1, "steps": 5, "restarts": 2}),
    ("apgd-dlr-l2", {"eps": 0.7, "steps": 5, "restarts": 2}),
    ("fab", {"eps": 0.1, "steps": 5, "restarts": 2}),
    ("fab-l2", {"eps": 0.7, "steps": 5, "restarts": 2}),
    ("square", {"eps": 0.1, "queries": 30}),
    ("square-l2", {"eps": 0.7, "queries": 30}),
    ("suite", {"eps": 0.1, "steps": 3, "queries": 10, "target_classes": 2}),
    ("bim", {"eps": 0.1, "alpha": 0.02, "steps": 3, "label_mode": "random-target"}),
]


@pytest.fixture(scope="module")
def setup(digits, digits_cnn):
    _, info, x, y = digits
    return digits_cnn.eval(), info, x[:100], y[:100]


def crafted(model, info, name, params, x, y, batch_size, index=None):
    return craft(model, REG.attack(name, **params), x, y, CraftOptions(info.bounds, 10, "cpu", batch_size, 5), index)


@pytest.mark.parametrize("name,params", RANDOMISED, ids=[n for n, _ in RANDOMISED])
def test_the_result_is_the_same_for_any_batch_size_and_any_split_into_shards(setup, name, params):
    model, info, x, y = setup
    whole = crafted(model, info, name, params, x, y, 100)
    other = crafted(model, info, name, params, x, y, 32)
    # two shards of the same cell, each crafted alone with its examples' dataset indices
    shards = [crafted(model, info, name, params, x[a:b], y[a:b], 48, torch.arange(a, b)) for a, b in ((0, 45), (45, 100))]
    pieces = torch.cat([s.x_adv for s in shards])
    with torch.no_grad():
        broken = [model(t).argmax(1) != y for t in (whole.x_adv, other.x_adv, pieces)]
    assert 0 < int(broken[0].sum()) < len(x)  # something to lose: neither none nor all broken
    assert torch.equal(broken[0], broken[1]) and torch.equal(broken[0], broken[2])
    assert torch.allclose(whole.x_adv, other.x_adv, atol=1e-5) and torch.allclose(whole.x_adv, pieces, atol=1e-5)
    assert torch.equal(whole.target, torch.cat([s.target for s in shards]))  # random targets too


def test_draws_follow_the_dataset_index_not_the_position(setup):
    """The same images at other dataset indices draw other starts (a start per example, not
    one noise pattern repeated); the same indices in another cell seed too."""
    model, info, x, y = setup
    params = {"eps": 0.1, "alpha": 0.02, "steps": 1}
    a = crafted(model, info, "pgd", params, x[:20], y[:20], 20, torch.arange(20))
    b = crafted(model, info, "pgd", params, x[:20], y[:20], 20, torch.arange(20, 40))
    assert not torch.equal(a.x_adv, b.x_adv)
    c = craft(model, REG.attack("pgd", **params), x[:20], y[:20], CraftOptions(info.bounds, 10, "cpu", 20, 6), torch.arange(20))
    assert not torch.equal(a.x_adv, c.x_adv)
    assert torch.equal(a.index, torch.arange(20))  # kept with the examples (the convergence probe reuses it)
    with pytest.raises(advx.AdvxError, match="19 example indices for 20 examples"):
        crafted(model, info, "pgd", params, x[:20], y[:20], 20, torch.arange(19))


def test_a_matrix_cell_does_not_move_with_its_batch_size(tmp_path):
    """The symptom of the issue: one cell key, two batch sizes, two robust accuracies."""
    def run(batch):
        spec = {
            "matrix": {"name": "batch", "samples": 60, "batch_size": batch, "cache_dir": str(tmp_path / "c")},
            "datasets": [{"name": "digits"}],
            "models": [{"name": "mlp", "train": {"epochs": 2}}],
            "attacks": [{"name": "pgd", "eps": 0.1, "alpha": 0.02, "steps": 3}],
        }
        (row,) = advx.run_matrix(spec).rows
        return row

    a, b = run(60), run(16)
    assert a["cell_key"] == b["cell_key"] and a["batch_size"] != b["batch_size"]
    assert 0 < a["robust_accuracy"] < 1
    assert (a["robust_accuracy"], a["mean_l2"]) == (b["robust_accuracy"], b["mean_l2"])
