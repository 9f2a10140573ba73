"""Benchmark: the ``channels_last`` matrix option, per forward pass and per attack (issue 24).

The CPU's convolution and pooling kernels pick their memory format from the input's
strides. A one-channel batch (MNIST, the digits) is stored the same way in both formats,
so ``contiguous(memory_format=torch.channels_last)`` leaves it with its NCHW strides, and
every tensor an attack builds (a candidate, an iterate) comes back NCHW too: the option
used to change nothing there. Now every input of the attacked model is put in
channels-last strides (``advx.runtime.crafting.channels_last``: a view for one channel, a
copy for three). This measures, in one run per model, on the same examples:

* one forward pass and one forward+backward pass of the model, NCHW vs channels-last input;
* ``craft`` of Square (1000 queries) and PGD-40 with the option off and on: seconds, and how
  many returned examples differ (the same memory through other kernels: float noise may
  flip an example that sits on the boundary, nothing more).

Models: ``digits`` and ``mnist-at`` from ``_models.py`` (one channel), and ``cifar-cnn``
untrained on random CIFAR-shaped inputs (three channels: the option copies; timing only).
With the option on, the model is converted too (a copy), as the kernel converts it.

    python benchmarks/channels_last.py [--samples 200] [--threads 2]

Results: ``benchmarks/results/channels-last-cpu.json`` and ``.md``.
"""

from __future__ import annotations

import copy
import time

import torch

import advx
from advx.contract.interfaces import DatasetInfo
from advx.runtime.crafting import CraftOptions, channels_last, craft
from _meta import begin, finish, header, parser
from _models import EPS, load


def per_call(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e3


def models(samples: int):
    for name in ("digits", "mnist-at"):
        model, x, y, bounds = load(name, samples)
        yield name, model, x, y, bounds, EPS[name], True
    reg = advx.Registry.discover()
    torch.manual_seed(0)
    info = DatasetInfo(name="cifar-shaped", num_classes=10, input_shape=(3, 32, 32), bounds=(0.0, 1.0), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    model = reg.model("cifar-cnn").build(info).eval()
    x, y = torch.rand(samples, 3, 32, 32), torch.randint(0, 10, (samples,))
    yield "cifar-cnn (untrained)", model, x, y, (0.0, 1.0), 8 / 255, False


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=100)
    args = ap.parse_args()
    args.models = "digits,mnist-at"
    meta = begin(args)
    reg = advx.Registry.discover()
    rows = []
    for name, model, x, y, bounds, eps, trained in models(args.samples):
        # NCHW strides, as a dataset's batch has them (a one-channel tensor can be "contiguous"
        # with channels-last strides too, and then takes the fast path already)
        x = x.clone(memory_format=torch.contiguous_format)
        # as the kernel does with the option: the model converted too (its own copy here)
        converted = {False: model, True: copy.deepcopy(model).to(memory_format=torch.channels_last)}
        row = {"model": name, "n": len(x), "shape": list(x.shape[1:])}
        for layout, inp in (("nchw", x), ("channels_last", channels_last(x))):
            net = converted[layout == "channels_last"]
            with torch.no_grad():
                row[f"forward_ms_{layout}"] = per_call(lambda: net(inp), args.repeats)
            xg = inp.clone().requires_grad_(True) if layout == "nchw" else channels_last(x.clone()).requires_grad_(True)
            row[f"fwd_bwd_ms_{layout}"] = per_call(lambda: torch.autograd.grad(net(xg).sum(), xg), args.repeats // 2)
        for attack, params in (("square", {"eps": eps, "queries": 1000}), ("pgd", {"eps": eps, "steps": 40, "alpha": 2.5 * eps / 40})):
            outs = {}
            for option in (False, True):
                t0 = time.perf_counter()
                outs[option] = craft(converted[option], reg.attack(attack, **params), x, y, CraftOptions(bounds, 10, batch_size=len(x), channels_last=option))
                row[f"{attack}_s_{'channels_last' if option else 'nchw'}"] = time.perf_counter() - t0
            with torch.no_grad():
                ok = [model(outs[o].x_adv).argmax(1) == y for o in (False, True)]
            row[f"{attack}_examples_differ"] = int((ok[0] != ok[1]).sum())
            row[f"{attack}_robust"] = [float(o.float().mean()) for o in ok]
        rows.append(row)
        print(row, flush=True)
    meta, md = finish(args, meta, "channels-last", rows, [])
    lines = header("The channels_last option: model passes and attacks, NCHW vs channels-last input", meta) + [
        "Per model, on the same examples (one batch): ms per forward and per forward+backward pass, and seconds of",
        "`craft` for Square (1000 queries) and PGD-40 with `channels_last` off and on; ratio = off / on (> 1: the option is faster).",
        "'differ': examples whose outcome (robust or not) differs between the two runs (float noise through other kernels).",
        "",
        "| model | input | forward ms (NCHW / CL, ratio) | fwd+bwd ms (NCHW / CL, ratio) | Square 1000 s (off / on, ratio, differ) | PGD-40 s (off / on, ratio, differ) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        def pair(a, b, fmt="{:.2f}"):
            return f"{fmt.format(a)} / {fmt.format(b)}, {a / b:.2f}x"
        lines.append(
            f"| {r['model']} | {r['n']} x {'x'.join(map(str, r['shape']))} | {pair(r['forward_ms_nchw'], r['forward_ms_channels_last'], '{:.3f}')} | "
            f"{pair(r['fwd_bwd_ms_nchw'], r['fwd_bwd_ms_channels_last'], '{:.3f}')} | "
            f"{pair(r['square_s_nchw'], r['square_s_channels_last'])}, {r['square_examples_differ']} | {pair(r['pgd_s_nchw'], r['pgd_s_channels_last'])}, {r['pgd_examples_differ']} |"
        )
    md.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
