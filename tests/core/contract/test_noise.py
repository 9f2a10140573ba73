"""``ExampleNoise``: per-example random numbers keyed by (seed, example index, stream).

What an attack's result needs from them: an example's numbers do not depend on which
examples share its batch (subsets, splits, order), they change with the seed, the
example and the stream, and they have the distribution each draw claims. ``Attack.noise``
falls back to positions and the batch seed outside the kernel, so that a caller that
hands a fresh seed per call (adversarial training, one per optimiser step) gets fresh
numbers.
"""

from __future__ import annotations

import math

import pytest
import torch

import advx
from advx import ExampleNoise


def test_an_example_draws_the_same_numbers_in_any_batch():
    whole = ExampleNoise.of(7, torch.arange(100))
    u = whole.uniform((3, 4), "start")
    # a subset (an attack on its unbroken examples), a split into shards, another order
    keep = torch.tensor([3, 50, 99, 0])
    assert torch.equal(whole[keep].uniform((3, 4), "start"), u[keep])
    shards = [ExampleNoise.of(7, torch.arange(a, b)).uniform((3, 4), "start") for a, b in ((0, 30), (30, 64), (64, 100))]
    assert torch.equal(torch.cat(shards), u)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ExampleNoise.of(7, order).uniform((3, 4), "start"), u[order])
    # dataset indices beyond 32 bits are keyed by both halves
    big = ExampleNoise.of(7, torch.tensor([5, 5 + 2**32])).uniform((8,), "start")
    assert not torch.equal(big[0], big[1])


def test_seed_example_stream_and_position_each_change_the_numbers():
    n = ExampleNoise.of(0, torch.arange(64))
    u = n.uniform((16,), "a")
    assert not torch.equal(u, ExampleNoise.of(1, torch.arange(64)).uniform((16,), "a"))  # cell seed
    assert not torch.equal(u, n.seeded(3).uniform((16,), "a"))  # the attack's own seed
    assert not torch.equal(u, n.uniform((16,), ("a", 1)))  # another stream
    assert torch.equal(u, n.uniform((16,), "a"))  # the same stream: the same numbers
    assert len(set(u.flatten().tolist())) == u.numel()  # positions and examples all differ


def test_the_draws_have_the_distributions_they_claim():
    n = ExampleNoise.of(0, torch.arange(2000))
    u = n.uniform((500,), "u")
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.002 and abs(float(u.std()) - math.sqrt(1 / 12)) < 0.002
    counts = torch.histc(u, 20, 0, 1)
    chi2 = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())
    assert chi2 < 50  # 19 degrees of freedom: 50 is beyond the 0.9999 quantile
    # neighbouring positions and neighbouring examples are uncorrelated
    assert abs(float(torch.corrcoef(torch.stack([u[:, 0], u[:, 1]]))[0, 1])) < 0.1
    assert abs(float(torch.corrcoef(torch.stack([u[0], u[1]]))[0, 1])) < 0.15
    z = n.normal((500,), "z")
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    assert abs(float((z.abs() > 1.96).float().mean()) - 0.05) < 0.003
    k = n.integers(2, 9, "k", (50,))
    assert int(k.min()) == 2 and int(k.max()) == 8
    share = torch.bincount(k.flatten() - 2).float() / k.numel()
    assert float((share - 1 / 7).abs().max()) < 0.005
    s = n.signs((50,), "s")
    assert set(s.unique().tolist()) == {-1.0, 1.0} and abs(float(s.mean())) < 0.01
    assert n.uniform((2, 3), "d", dtype=torch.float64).dtype == torch.float64


def test_bad_shapes_and_ranges_say_so():
    with pytest.raises(ValueError, match="one per example"):
        ExampleNoise(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="empty range"):
        ExampleNoise.of(0, torch.arange(3)).integers(4, 4, "k")


class _Draws(advx.Attack):
    """Returns its batch unchanged; keeps the noise it drew (for the test below)."""

    name = "draws"

    class Config(advx.AttackConfig):
        eps: float = 0.1

    def perturb(self, model, x, y, bounds, targeted=False):
        self.drawn = self.noise(x, 0).uniform((4,), "start")
        return x


def test_attack_noise_outside_the_kernel_follows_the_batch_seed():
    """No index outside the kernel: positions 0..N-1 keyed by the batch seed of ``begin_batch``,
    so an adversarial training that hands one seed per step draws fresh starts per step."""
    attack, x = _Draws(_Draws.validate_config({})), torch.zeros(5, 2)
    attack.perturb(None, x, None, (0.0, 1.0))
    first = attack.drawn
    assert torch.equal(first, ExampleNoise.of(0, torch.arange(5)).seeded(0).uniform((4,), "start"))
    attack.begin_batch(1)
    attack.perturb(None, x, None, (0.0, 1.0))
    assert not torch.equal(first, attack.drawn)
    # the kernel's keyed examples, where they match the batch
    attack.begin_batch(1, ExampleNoise.of(9, torch.arange(10, 15)))
    attack.perturb(None, x, None, (0.0, 1.0))
    assert torch.equal(attack.drawn, ExampleNoise.of(9, torch.arange(10, 15)).seeded(0).uniform((4,), "start"))


def test_many_streams_at_once_draw_what_each_stream_draws():
    # Square draws a block of queries' words in one call: the numbers must be those of the
    # stream-by-stream draws, and those must not change between releases (stored results
    # name their seed, and a rerun must search the same windows): pinned values below
    n = ExampleNoise.of(7, torch.arange(3))
    streams = [("square-query", q) for q in range(4)] + ["start"]
    many = n.bits_many((2,), streams)
    assert many.shape == (3, 5, 2)
    for j, s in enumerate(streams):
        assert torch.equal(many[:, j], n.bits((2,), s))
    assert many[:, 1:2].tolist() != many[:, 2:3].tolist()
    assert n.bits((2,), ("square-query", 5)).tolist() == [
        [81969733, 3215889358], [1877023433, 3662564041], [3410574730, 2954416312],
    ]
