"""Each built-in model against the architecture its source paper states.

Parameter counts are recomputed here from the layer list of the paper (not read back from
the implementation), so a wrong kernel size, width, padding or FC size shows up as a
count mismatch.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import advx

REGISTRY = advx.Registry.discover()
MNIST = advx.DatasetInfo(name="mnist", input_shape=(1, 28, 28), num_classes=10, mean=(0.1307,), std=(0.3081,))
CIFAR = advx.DatasetInfo(name="cifar10", input_shape=(3, 32, 32), num_classes=10)
DIGITS = advx.DatasetInfo(name="digits", input_shape=(1, 8, 8), num_classes=10, mean=(0.3051,), std=(0.3820,))


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def fc(nin: int, nout: int) -> int:
    return nin * nout + nout


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def feature_shapes(net: nn.Module, x: torch.Tensor, types: tuple[type, ...]) -> list[tuple[int, ...]]:
    """Output shapes (without batch) of every module of the given types, in call order."""
    shapes: list[tuple[int, ...]] = []
    handles = [m.register_forward_hook(lambda _m, _i, o: shapes.append(tuple(o.shape[1:]))) for m in net.modules() if isinstance(m, types)]
    with torch.no_grad():
        net.eval()(x)
    for h in handles:
        h.remove()
    return shapes


# -- mnist-cnn: seed 002, Table 1 ---------------------------------------------------------


def test_mnist_cnn_table1():
    net = REGISTRY.model("mnist-cnn").build(MNIST)
    # conv 32 3x3 (28 -> 26), maxpool 2 (-> 13), FC 128, FC 10
    assert n_params(net) == conv(1, 32, 3) + fc(32 * 13 * 13, 128) + fc(128, 10) == 693_962
    assert feature_shapes(net, torch.zeros(1, 1, 28, 28), (nn.Conv2d, nn.MaxPool2d)) == [(32, 26, 26), (32, 13, 13)]


def test_mnist_cnn_mixed_architecture_members():
    wide = REGISTRY.model("mnist-cnn", filters=64).build(MNIST)
    assert n_params(wide) == conv(1, 64, 3) + fc(64 * 13 * 13, 128) + fc(128, 10)
    deep = REGISTRY.model("mnist-cnn", extra_conv=True).build(MNIST)
    assert n_params(deep) == conv(1, 32, 3) + conv(32, 32, 3) + fc(32 * 13 * 13, 128) + fc(128, 10)


# -- cifar-cnn: seed 002, Table 3 ---------------------------------------------------------


def cifar_cnn_count(widths: list[int], convs_per_block: int, cin: int = 3, spatial: int = 32) -> int:
    total, prev = 0, cin
    for w in widths:
        for _ in range(convs_per_block):
            total += conv(prev, w, 3)
            prev = w
        spatial //= 2
    return total + fc(prev * spatial * spatial, 512) + fc(512, 10)


def test_cifar_cnn_table3():
    net = REGISTRY.model("cifar-cnn").build(CIFAR)
    assert n_params(net) == cifar_cnn_count([32, 64, 128], 2) == 1_341_226
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [32, 32, 64, 64, 128, 128]
    assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) for m in convs)
    pools = feature_shapes(net, torch.zeros(1, 3, 32, 32), (nn.MaxPool2d,))
    assert pools == [(32, 16, 16), (64, 8, 8), (128, 4, 4)]
    fcs = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in fcs] == [(2048, 512), (512, 10)]


def test_cifar_cnn_mixed_architecture_members():
    assert n_params(REGISTRY.model("cifar-cnn", filters=48).build(CIFAR)) == cifar_cnn_count([48, 96, 192], 2)
    assert n_params(REGISTRY.model("cifar-cnn", extra_conv=True).build(CIFAR)) == cifar_cnn_count([32, 64, 128], 3)


# -- lenet5: seed 003 / LeCun et al. 1998 ---------------------------------------------------


def test_lenet5_layer_sizes_follow_seed_003():
    net = REGISTRY.model("lenet5").build(MNIST)
    shapes = feature_shapes(net, torch.zeros(1, 1, 28, 28), (nn.Conv2d, nn.AvgPool2d, nn.Linear))
    # C1 6@28x28, S2 6@14x14, C3 16@10x10, S4 16@5x5, C5 120, F6 84, output 10
    assert shapes == [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5), (120,), (84,), (10,)]
    # the connection and parameter counts seed 003 quotes
    assert (net.c1.weight.numel() + net.c1.bias.numel()) * 28 * 28 == 122_304  # C1 connections
    assert n_params(net.c5) == 48_120  # C5 (connections == parameters: its map is 1x1)
    assert n_params(net.f6) == 10_164  # F6 trainable parameters
    assert net.c3.effective_parameters() == 1_516  # LeCun's Table I connectivity
    effective = n_params(net) - net.c3.weight.numel() + net.c3.effective_parameters() - net.c3.out_channels
    assert effective == 156 + 1_516 + 48_120 + 10_164 + fc(84, 10) == 60_806


def test_lenet5_c3_table_masks_stay_zero_through_training():
    net = REGISTRY.model("lenet5").build(MNIST)
    assert net.c3.mask.sum() == 60  # 6x3 + 9x4 + 1x6 input maps
    assert (net.c3.mask.sum(dim=1).flatten().tolist()) == [3] * 6 + [4] * 9 + [6]
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    loss = nn.functional.cross_entropy(net(torch.rand(8, 1, 28, 28)), torch.arange(8))
    loss.backward()
    opt.step()
    masked = net.c3.weight * (1 - net.c3.mask)
    assert masked.abs().sum() == 0
    full = REGISTRY.model("lenet5", c3_connections="full").build(MNIST)
    assert n_params(full.c3) == conv(6, 16, 5) == 2_416


def test_lenet5_pads_with_the_normalised_background():
    """28x28 MNIST is padded to 32x32 with black as the net sees it, not with zero (= grey)."""
    net = advx.build_model(REGISTRY.model("lenet5"), MNIST)
    seen = {}
    net.net.c1.register_forward_hook(lambda _m, i, _o: seen.__setitem__("x", i[0]))
    with torch.no_grad():
        net(torch.zeros(1, 1, 28, 28))
    x = seen["x"]
    assert x.shape == (1, 1, 32, 32)
    torch.testing.assert_close(x, torch.full_like(x, (0 - 0.1307) / 0.3081))
    # without normalisation the frame is the raw lower bound
    raw = REGISTRY.model("lenet5", normalize=False).build(MNIST)
    seen.clear()
    raw.c1.register_forward_hook(lambda _m, i, _o: seen.__setitem__("x", i[0]))
    with torch.no_grad():
        raw(torch.ones(1, 1, 28, 28))
    assert seen["x"][0, 0, 0, 0] == 0 and seen["x"][0, 0, 2, 2] == 1 and seen["x"].sum() == 28 * 28


def test_lenet5_options():
    net = REGISTRY.model("lenet5", activation="relu", pooling="max").build(CIFAR)
    kinds = {type(m) for m in net.modules()}
    assert nn.ReLU in kinds and nn.MaxPool2d in kinds and nn.Tanh not in kinds and nn.AvgPool2d not in kinds
    assert net.c1.in_channels == 3 and not any(net.pad.pad)  # 32x32 needs no padding
    # input_size: MNIST padded to 36x36 instead of 32x32, so C1 sees 36x36 and C5 a 3x3 map
    big = REGISTRY.model("lenet5", input_size=36).build(MNIST)
    shapes = feature_shapes(big, torch.zeros(1, 1, 28, 28), (nn.Conv2d,))
    assert shapes[0] == (6, 32, 32) and shapes[1] == (16, 12, 12)


# -- conv-f: seed 004 model F (Defense-GAN's model F) -------------------------------------


def test_conv_f_table1():
    net = REGISTRY.model("conv-f").build(MNIST)
    # conv 64 8x8/2 SAME (28 -> 14), conv 128 6x6/2 VALID (14 -> 5), FC 10
    assert feature_shapes(net, torch.zeros(1, 1, 28, 28), (nn.Conv2d,)) == [(64, 14, 14), (128, 5, 5)]
    assert n_params(net) == conv(1, 64, 8) + conv(64, 128, 6) + fc(128 * 5 * 5, 10) == 331_210
    third = REGISTRY.model("conv-f", third_conv=True).build(MNIST)
    assert feature_shapes(third, torch.zeros(1, 1, 28, 28), (nn.Conv2d,))[-1] == (128, 1, 1)
    assert n_params(third) == conv(1, 64, 8) + conv(64, 128, 6) + conv(128, 128, 5) + fc(128, 10)


def test_conv_f_pads_digits_up_to_the_minimum():
    net = REGISTRY.model("conv-f").build(DIGITS)
    # 8x8 padded to 11x11 -> SAME/2 -> 6x6 -> VALID 6x6/2 -> 1x1
    assert feature_shapes(net, torch.zeros(1, 1, 8, 8), (nn.Conv2d,)) == [(64, 6, 6), (128, 1, 1)]
    with pytest.raises(advx.ConfigError, match="27x27"):
        REGISTRY.model("conv-f", third_conv=True, pad_small=False).build(MNIST.model_copy(update={"input_shape": (1, 26, 26)}))


# -- wide-resnet: Zagoruyko & Komodakis 2016, seed 004 --------------------------------------


def wrn_count(depth: int, k: int, cin: int = 3, classes: int = 10) -> int:
    """Parameters of WRN-depth-k from the paper's structure (pre-act basic blocks, BN, FC)."""
    n = (depth - 4) // 6
    total = conv(cin, 16, 3, bias=False)
    prev = 16
    for width in (16 * k, 32 * k, 64 * k):
        for i in range(n):
            a = prev if i == 0 else width
            total += 2 * a + conv(a, width, 3, False) + 2 * width + conv(width, width, 3, False)
            if a != width or i == 0 and width != 16 * k:  # 1x1 shortcut on width or stride change
                total += conv(a, width, 1, False)
        prev = width
    return total + 2 * prev + fc(prev, classes)


@pytest.mark.parametrize(
    "depth, k, expected, published_m",
    [
        (34, 8, 29_551_578, None),  # seed 004's default network
        (46, 8, 41_945_050, None),  # seed 004, Table 8
        (28, 10, 36_479_194, 36.5),  # WRN paper, Table 4
        (16, 8, 10_961_370, 11.0),  # WRN paper, Table 4
        (34, 10, 46_160_474, 46.2),  # the usual adversarial-training WRN
    ],
)
def test_wide_resnet_parameter_counts(depth, k, expected, published_m):
    assert wrn_count(depth, k) == expected
    with torch.device("meta"):  # no memory, no init cost: only shapes are needed
        net = REGISTRY.model("wide-resnet", depth=depth, widen_factor=k).build(CIFAR)
    assert n_params(net) == expected
    if published_m is not None:
        assert round(expected / 1e6, 1) == published_m


def test_wide_resnet_default_is_wrn_34_8():
    cfg = REGISTRY.model("wide-resnet").config
    assert (cfg.depth, cfg.widen_factor) == (34, 8)
    with torch.device("meta"):
        net = REGISTRY.model("wide-resnet").build(CIFAR)
    convs3 = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    convs1 = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(convs3) == 6 * 5 + 1 and len(convs1) == 3  # n = (34 - 4) / 6 = 5 blocks per group
    assert [len(g) for g in (net.block1, net.block2, net.block3)] == [5, 5, 5]
    assert net.fc.in_features == 64 * 8 == net.num_features


def test_wide_resnet_shapes_and_hidden_state():
    net = REGISTRY.model("wide-resnet", depth=10, widen_factor=2).build(CIFAR).eval()
    shapes = feature_shapes(net, torch.zeros(1, 3, 32, 32), (nn.Sequential,))
    assert shapes == [(32, 32, 32), (64, 16, 16), (128, 8, 8)]
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        pooled = net.hidden_states(x)["pool"]
    assert pooled.shape == (3, 128) and (pooled >= 0).all()  # after BN-ReLU and average pooling
    with torch.no_grad():
        torch.testing.assert_close(net.fc(pooled), net(x))


def test_wide_resnet_dropout_sits_inside_the_blocks():
    net = REGISTRY.model("wide-resnet", depth=10, widen_factor=1, dropout=0.3).build(CIFAR)
    drops = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 3 and all(d.p == 0.3 for d in drops)
    assert not any(isinstance(m, nn.Dropout) for m in REGISTRY.model("wide-resnet", depth=10, widen_factor=1).build(CIFAR).modules())
