"""``digits`` and ``synthetic``, the two datasets that need no file: every config field
changes what is loaded (a dataset that ignored ``split_seed`` or ``noise`` would silently
evaluate on other data than the spec names)."""

from __future__ import annotations

import pytest
import torch

import advx

REG = advx.Registry.discover()


def tensors(name: str, split: str, **cfg) -> tuple[torch.Tensor, torch.Tensor]:
    return advx.take(REG.dataset(name, **cfg).load(split), 10**6)


def test_digits_test_size_and_split_seed():
    x0, y0 = tensors("digits", "test")
    assert len(y0) == 500 and len(tensors("digits", "train")[1]) == 1797 - 500
    assert len(tensors("digits", "test", test_size=300)[1]) == 300
    x1, y1 = tensors("digits", "test", split_seed=1)
    assert len(y1) == 500 and not torch.equal(x0, x1)
    assert torch.equal(torch.bincount(y0), torch.bincount(y1))  # stratified either way
    assert torch.equal(tensors("digits", "test", split_seed=1)[0], x1)  # and reproducible


@pytest.mark.parametrize(
    "field,value",
    [("shape", (3, 4, 4)), ("num_classes", 3), ("train_size", 17), ("test_size", 11), ("noise", 0.0), ("seed", 1)],
)
def test_synthetic_fields(field, value):
    base = {"train_size": 40, "test_size": 30}
    x0, y0 = tensors("synthetic", "test", **base)
    xt0, _ = tensors("synthetic", "train", **base)
    x, y = tensors("synthetic", "test", **{**base, field: value})
    xt, yt = tensors("synthetic", "train", **{**base, field: value})
    info = REG.dataset("synthetic", **{**base, field: value}).info()
    if field == "shape":
        assert x.shape[1:] == value and info.input_shape == value
    elif field == "num_classes":
        assert info.num_classes == 3 and int(y.max()) <= 2 and int(yt.max()) <= 2 and len(set(y.tolist())) == 3
    elif field == "train_size":
        assert len(yt) == 17 and len(y) == 30
    elif field == "test_size":
        assert len(y) == 11 and len(yt) == 40
    elif field == "noise":
        # no noise: every example is its class prototype, the same within a class
        for c in y.unique():
            assert torch.equal(x[y == c].amin(0), x[y == c].amax(0))
        assert not torch.equal(x0[y0 == y0[0]].amin(0), x0[y0 == y0[0]].amax(0))
    else:
        assert not torch.equal(x, x0) and not torch.equal(xt, xt0)
