"""The ``channels_last`` matrix option holds for every forward pass of the attacked model,
not only for the batch the kernel hands over (``advx.runtime.crafting.channels_last``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import advx
from advx.runtime.crafting import CraftOptions, channels_last, craft


def test_a_one_channel_batch_gets_channels_last_strides_over_the_same_memory():
    x = torch.rand(5, 1, 6, 7)
    assert x.contiguous(memory_format=torch.channels_last).stride() == x.stride()  # what PyTorch leaves
    v = channels_last(x)
    assert v.stride() == (42, 1, 7, 1) and v.data_ptr() == x.data_ptr() and torch.equal(v, x)
    assert v.is_contiguous(memory_format=torch.channels_last)
    # gradients flow through the view
    xg = x.clone().requires_grad_(True)
    (channels_last(xg) * 2).sum().backward()
    assert torch.equal(xg.grad, torch.full_like(x, 2.0))
    rgb = torch.rand(2, 3, 4, 4)
    assert channels_last(rgb).stride() == (48, 1, 12, 3) and torch.equal(channels_last(rgb), rgb)
    flat = torch.rand(3, 8)
    assert channels_last(flat) is flat


class _Spy(nn.Module):
    """A one-channel conv net recording the strides of every input it sees."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x):
        self.seen.append(x.stride())
        return self.net(x)


@pytest.mark.parametrize("attack", [("square", {"eps": 0.2, "queries": 30}), ("pgd", {"eps": 0.2, "steps": 5, "alpha": 0.05})])
def test_every_forward_of_the_attacked_model_is_channels_last_with_the_option(attack):
    reg = advx.Registry.discover()
    name, params = attack
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    results = {}
    for option in (False, True):
        model = _Spy().eval()
        out = craft(model, reg.attack(name, **params), x, y, CraftOptions((0.0, 1.0), 10, channels_last=option))
        results[option] = out
        cl = [s[1] == 1 for s in model.seen]
        if option:
            assert cl and all(cl), model.seen
        else:
            assert not all(cl)  # without it the attack's own tensors reach the model in the default format
    # the same memory, other kernels: the same examples within float noise
    assert torch.allclose(results[True].x_adv, results[False].x_adv, atol=1e-5)


def test_the_pass_counter_is_in_the_mode_of_the_model_it_wraps():
    # a peer that saves the mode it finds and puts it back must not switch dropout on
    model = _Spy().eval()
    counter = advx.PassCounter(model, channels_last=True)
    assert not counter.training
    was = counter.training
    counter.eval()
    counter.train(was)
    assert not model.training
    assert advx.PassCounter(_Spy().train()).training
