"""Draw the seed 003 rotation curves (the paper's Figures 2-5) from the stored study JSON.

``docs/reproductions.md`` shows the curves as a picture; this script makes it from
``experiments/results/seed003-rotation.json`` (``rotation.py --out``'s file), nothing else,
so the figure and the tables beside it come from the same stored run:

    python experiments/seed003-rotation/curves.py            # writes docs/images/seed003-rotation-curves.png
    python experiments/seed003-rotation/curves.py --results FILE.json --out FILE.png

One panel per pair and attack (1 -> 8 and 6 -> 9; bim-20 and the early-stopping variant):
the mean probability of the true class on the adversarial examples, of the target class, of
the true class on the clean images, and the accuracy on the adversarial examples, against
the rotation angle (0-90 degrees). The dashed line is the median ORACLE angle (chosen per
image with the true label: not a deployable defense). Needs matplotlib (``advx[report]``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from advx.plugins.defenses.rotation_study import load_rotation

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "results" / "seed003-rotation.json"
OUT = ROOT / "docs" / "images" / "seed003-rotation-curves.png"
LABELS = {"adv_p_true": "adversarial: p(true)", "adv_p_target": "adversarial: p(target)", "clean_p_true": "clean: p(true)"}


def draw(results: Path, out: Path) -> int:
    """Write the figure; return the number of panels drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    studies = load_rotation(results)
    if not studies:
        raise SystemExit(f"error: {results} holds no rotation curves (expected rotation.py --out's file)")
    cols = 2
    rows = (len(studies) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(10, 3.2 * rows), squeeze=False, sharey=True)
    for ax, s in zip(axes.flat, studies):
        for key, values in s["curves"].items():
            ax.plot(s["angles"], values, label=LABELS.get(key, key))
        if "adv" in s["accuracy"]:
            ax.plot(s["angles"], s["accuracy"]["adv"], ls=":", color="black", label="accuracy on adversarial")
        if s["oracle_angle"] is not None:
            ax.axvline(s["oracle_angle"], ls="--", color="grey", lw=1)
        ax.set_title(f"{s['name']} ({s['n']} test images)", fontsize=9)
        ax.set_xlabel("rotation angle (degrees)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(studies):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("mean probability / accuracy")
    axes.flat[0].legend(fontsize=7, loc="center right")
    fig.suptitle("[4]: rotating targeted adversarial examples (dashed: median ORACLE angle)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return len(studies)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="the study's JSON (default: the stored one)")
    ap.add_argument("--out", type=Path, default=OUT, help="the PNG to write")
    args = ap.parse_args(argv)
    n = draw(args.results, args.out)
    print(f"wrote {n} panels to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
