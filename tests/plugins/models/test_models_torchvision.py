"""``vgg19`` / ``inception-v3``: optional torchvision, local weights, ImageNet normalisation.

The missing-torchvision path is tested always (torchvision is hidden through
``sys.modules``); the tests that build the real networks need torchvision and skip
without it. They save a randomly initialised torchvision network as the "user's weights
file", so no download is ever needed.
"""

from __future__ import annotations

import sys

import pytest
import torch

import advx

REGISTRY = advx.Registry.discover()
IMAGENET_224 = advx.DatasetInfo(name="imagenet", input_shape=(3, 224, 224), num_classes=1000)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@pytest.fixture
def no_torchvision(monkeypatch):
    """Make ``import torchvision`` fail, whether or not it is installed."""
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)


@pytest.mark.parametrize("name", ["vgg19", "inception-v3"])
def test_registered_without_torchvision_and_config_validated(name, no_torchvision):
    cls = REGISTRY.get("model", name)
    assert cls.name == name
    with pytest.raises(advx.ConfigError, match=rf'model "{name}": weights: Field required'):
        REGISTRY.model(name)
    with pytest.raises(advx.ConfigError, match=rf'model "{name}": normalize:'):
        REGISTRY.model(name, weights="w.pth", normalize=True)


@pytest.mark.parametrize("name", ["vgg19", "inception-v3"])
def test_missing_torchvision_is_a_one_line_config_error(name, no_torchvision, tmp_path):
    weights = tmp_path / "w.pth"
    torch.save({}, weights)
    with pytest.raises(advx.ConfigError) as exc:
        REGISTRY.model(name, weights=str(weights)).build(IMAGENET_224)
    msg = str(exc.value)
    assert "pip install torchvision" in msg and f'model "{name}"' in msg and "\n" not in msg


def test_build_model_does_not_add_the_dataset_normalisation(no_torchvision):
    """normalize is fixed to false, so advx.build_model leaves the ImageNet wrapper alone."""
    model = REGISTRY.model("vgg19", weights="w.pth")
    assert model.config.normalize is False


# -- with torchvision -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tv_models():
    return pytest.importorskip("torchvision.models", reason="torchvision is optional")


def test_missing_and_unreadable_weights(tv_models, tmp_path):
    with pytest.raises(advx.ConfigError, match=r'model "vgg19": weights: file .* does not exist'):
        REGISTRY.model("vgg19", weights=str(tmp_path / "nope.pth")).build(IMAGENET_224)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(advx.ConfigError, match=r'model "vgg19": weights: cannot read'):
        REGISTRY.model("vgg19", weights=str(garbage)).build(IMAGENET_224)
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"x": object()}}, pickled)  # not loadable with weights_only
    with pytest.raises(advx.ConfigError, match=r"weights: cannot read"):
        REGISTRY.model("vgg19", weights=str(pickled)).build(IMAGENET_224)


def test_weights_of_another_network_are_rejected(tv_models, tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(tv_models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(advx.ConfigError, match=r"does not fit torchvision's vgg19: .*missing keys"):
        REGISTRY.model("vgg19", weights=str(path)).build(IMAGENET_224)


def test_input_shape_is_checked(tv_models, tmp_path):
    with pytest.raises(advx.ConfigError, match=r"needs RGB inputs .* at least 75x75"):
        REGISTRY.model("inception-v3", weights=str(tmp_path / "w.pth")).build(
            advx.DatasetInfo(name="mnist", input_shape=(1, 28, 28), num_classes=10)
        )


@pytest.mark.slow
def test_inception_v3_loads_weights_and_normalises_itself(tv_models, tmp_path):
    torch.manual_seed(0)
    ref = tv_models.inception_v3(weights=None, num_classes=10, aux_logits=True, transform_input=True, init_weights=False).eval()
    path = tmp_path / "inception.pth"
    torch.save(ref.state_dict(), path)
    info = advx.DatasetInfo(name="imagenet", input_shape=(3, 299, 299), num_classes=10, mean=(0.5,) * 3, std=(0.5,) * 3)
    net = advx.build_model(REGISTRY.model("inception-v3", weights=str(path)), info).eval()
    assert isinstance(net, advx.NormalizedModel)  # exactly one wrapper: ImageNet's
    assert torch.allclose(net.normalize.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    x = torch.rand(2, 3, 299, 299)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref((x - mean) / std))
        states = net.hidden_states(x)
    assert set(states) == {"pool"} and states["pool"].shape == (2, 2048)
    net.train()
    assert net(x).shape == (2, 10)  # train mode: logits only, the auxiliary output is dropped


@pytest.mark.slow
def test_vgg19_loads_weights_and_exposes_fc_states(tv_models, tmp_path):
    torch.manual_seed(0)
    ref = tv_models.vgg19(weights=None, num_classes=10).eval()
    path = tmp_path / "vgg19.pth"
    torch.save({"state_dict": ref.state_dict()}, path)  # the wrapped form is accepted too
    info = advx.DatasetInfo(name="imagenet-small", input_shape=(3, 64, 64), num_classes=10)
    net = advx.build_model(REGISTRY.model("vgg19", weights=str(path)), info).eval()
    x = torch.rand(2, 3, 64, 64)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref((x - mean) / std))
        states = net.hidden_states(x)
        assert {k: tuple(v.shape) for k, v in states.items()} == {"fc1": (2, 4096), "fc2": (2, 4096)}
        assert (states["fc2"] >= 0).all()
        torch.testing.assert_close(ref.classifier[6](states["fc2"]), net(x))
