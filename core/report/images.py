"""PNG without dependencies: examples as images for the gallery and ``advx results --examples``."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import Any
from advx.report.blocks import PLACE


def png_bytes(pixels: Any) -> bytes:
    """A PNG of a uint8 array of shape (H, W) (grey) or (H, W, 3) (RGB)."""
    import numpy as np

    a = np.ascontiguousarray(pixels, dtype=np.uint8)
    if a.ndim == 2:
        color = 0
    elif a.ndim == 3 and a.shape[2] == 3:
        color = 2
    else:
        raise ValueError(f"png_bytes: shape {a.shape} is neither (H, W) nor (H, W, 3)")
    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + a[i].tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def to_pixels(t: Any, lo: float = 0.0, hi: float = 1.0, min_side: int = 64) -> Any:
    """A (C, H, W) tensor in [lo, hi] as a uint8 (H, W) or (H, W, 3) array, upscaled (nearest) so its short side is >= ``min_side``."""
    import numpy as np

    a = t.detach().float().cpu().numpy()
    if a.ndim == 2:
        a = a[None]
    a = a[:3] if a.shape[0] >= 3 else a[:1]
    a = np.clip((a - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    a = (a * 255.0 + 0.5).astype(np.uint8)
    a = a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    scale = max(1, math.ceil(min_side / max(1, min(a.shape[0], a.shape[1]))))
    if scale > 1:
        a = np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)
    return a


def example_images(x: Any, x_adv: Any) -> tuple[bytes, bytes, bytes, float]:
    """PNGs of a clean input, its adversarial version and the perturbation amplified to the full range, and that amplification."""
    lo, hi = min(0.0, float(x.min()), float(x_adv.min())), max(1.0, float(x.max()), float(x_adv.max()))
    delta = (x_adv - x).float()
    peak = float(delta.abs().max())
    amp = (hi - lo) / (2 * peak) if peak > 0 else 1.0
    shown = (lo + hi) / 2 + delta * amp  # grey: unchanged
    return png_bytes(to_pixels(x, lo, hi)), png_bytes(to_pixels(x_adv, lo, hi)), png_bytes(to_pixels(shown, lo, hi)), amp


def export_examples(db: str | Path, folder: str | Path, spec_name: str | None = None) -> tuple[int, int]:
    """Write every kept example of ``db`` as PNG files under ``folder``; return (cells, examples).

    ``folder/<cell_key>/<idx>-clean.png``, ``-adversarial.png`` and ``-perturbation.png``
    (amplified; grey is unchanged), and ``folder/examples.csv`` naming each file's cell,
    true label, predictions and confidences.
    """
    import csv

    from advx.contract.errors import ConfigError
    from advx.store.results import ResultStore

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--examples {str(folder)!r}: cannot create the folder ({exc.strerror})") from None
    n_cells = n_examples = 0
    with ResultStore(db, readonly=True) as store, open(folder / "examples.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell_key", *PLACE, "idx", "label", "clean_pred", "clean_conf", "adv_pred", "adv_conf", "linf", "l2", "clean", "adversarial", "perturbation", "amplification"])
        have = store.cells_with_examples()
        for r in store.cells(spec_name):
            if r["cell_key"] not in have:
                continue
            ex = store.examples(r["cell_key"])
            if ex is None:
                continue
            n_cells += 1
            sub = folder / r["cell_key"]
            sub.mkdir(exist_ok=True)
            for i in range(len(ex["idx"])):
                idx = int(ex["idx"][i])
                c, a, p, amp = example_images(ex["x"][i], ex["x_adv"][i])
                names = [f"{r['cell_key']}/{idx}-{k}.png" for k in ("clean", "adversarial", "perturbation")]
                for name, data in zip(names, (c, a, p)):
                    (folder / name).write_bytes(data)
                get = lambda k, cast: cast(ex[k][i]) if k in ex else ""  # noqa: E731
                w.writerow([r["cell_key"], *(r.get(k) for k in PLACE), idx, get("label", int), get("clean_pred", int), get("clean_conf", float), get("adv_pred", int), get("adv_conf", float), get("linf", float), get("l2", float), *names, f"{amp:.3f}"])
                n_examples += 1
    return n_cells, n_examples
