"""Fixtures shared by the attack tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def data(digits, digits_cnn):
    """The digits CNN and its first 100 correctly classified test digits (peers' DeepFool and
    FAB start from the prediction, so misclassified inputs would not compare)."""
    model = digits_cnn.eval()
    _, _, x, y = digits
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return model, x[ok][:100].clone(), y[ok][:100].clone()
