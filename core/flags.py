"""Sanity flags over finished cells: the checks of an honest evaluation that results allow.

Carlini et al. ("On Evaluating Adversarial Robustness", 2019) list sanity tests whose
failure means the evaluation, not the model, is broken; three of them need nothing but
the results of a matrix, so advx runs them after every ``advx run`` and on demand
(``advx results DB``):

* ``eps-not-monotone``: a larger budget of the same attack must not leave the model *more*
  accurate;
* ``iterative-weaker``: an iterative attack must be at least as strong as the single-step
  attack it declares as its counterpart (``Attack.single_step``: FGSM for BIM and PGD) at
  the same eps and label mode;
* ``weaker-knowledge-stronger``: an attacker who knows less (a threat model declaring
  ``less_knowledge``: transfer, undefended, gray-box, one ensemble member) must not beat
  the white-box attacker, or the white-box gradients are masked.

Flags read what attacks and threat models declare (stored with every row as
``attack_traits`` and ``threat_config``), never plugin names, so a third-party attack gets
the same checks as the built-ins.

A flag is a place to look, not a verdict; each says which cells disagree and by how much.
Differences smaller than two examples' worth of accuracy are ignored.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from .threats import less_knowledge


#: the checks ``sanity_flags`` runs, by the name its flags carry
CHECKS = ("eps-not-monotone", "iterative-weaker", "weaker-knowledge-stronger")


@dataclass(frozen=True)
class Flag:
    check: str
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.message}"


def _cfg(row: dict[str, Any], key: str) -> dict[str, Any]:
    v = row.get(key)
    if isinstance(v, str):
        return json.loads(v)
    return dict(v or {})


def _tol(*rows: dict[str, Any]) -> float:
    n = min(int(r.get("n") or 1) for r in rows)
    return 2.0 / max(n, 1)


def sanity_flags(rows: list[dict[str, Any]]) -> list[Flag]:
    """Flags for the finished cells in ``rows`` (result rows of one or more matrices)."""
    done = [r for r in rows if r.get("status") == "done" and r.get("robust_accuracy") is not None]
    flags: list[Flag] = []
    place = lambda r: f"{r['dataset']} / {r['model']} / {r['defense']} / {r['threat']}"  # noqa: E731

    # 1. budget monotonicity within one attack's eps sweep
    sweeps: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in done:
        cfg = _cfg(r, "attack_config")
        if cfg.get("eps") is None:
            continue
        rest = json.dumps({k: v for k, v in cfg.items() if k != "eps"}, sort_keys=True)
        sweeps[(place(r), rest)].append(r)
    for (where, _), cells in sweeps.items():
        cells.sort(key=lambda r: _cfg(r, "attack_config")["eps"])
        for a, b in zip(cells, cells[1:]):
            if b["robust_accuracy"] > a["robust_accuracy"] + _tol(a, b):
                flags.append(
                    Flag(
                        "eps-not-monotone",
                        f"{where}: {b['attack']} leaves accuracy {b['robust_accuracy']:.4f}, higher than "
                        f"{a['attack']} at a smaller eps ({a['robust_accuracy']:.4f})",
                    )
                )

    # 2. iterative at least as strong as its declared single-step counterpart at equal eps
    by_place: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in done:
        by_place[place(r)].append(r)
    for where, cells in by_place.items():
        single = {}
        for r in cells:
            cfg = _cfg(r, "attack_config")
            single[(cfg.get("name"), cfg.get("eps"), cfg.get("label_mode"))] = r
        for r in cells:
            cfg, traits = _cfg(r, "attack_config"), _cfg(r, "attack_traits")
            counterpart = traits.get("single_step")
            ref = single.get((counterpart, cfg.get("eps"), cfg.get("label_mode")))
            if traits.get("iterative") and counterpart and ref is not None:
                if r["robust_accuracy"] > ref["robust_accuracy"] + _tol(r, ref):
                    flags.append(
                        Flag(
                            "iterative-weaker",
                            f"{where}: {r['attack']} leaves accuracy {r['robust_accuracy']:.4f}, higher than "
                            f"its single step {ref['attack']} at the same eps ({ref['robust_accuracy']:.4f}): too few steps or masked gradients",
                        )
                    )

    # 3. less knowledge must not mean a stronger attack
    by_attack: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in done:
        by_attack[(r["dataset"], r["model"], r["defense"], r["attack"])][r["threat"]] = r
    for (d, m, df, a), threats in by_attack.items():
        wb = threats.get("white-box")
        if wb is None:
            continue
        for name, r in threats.items():
            weaker = less_knowledge(_cfg(r, "threat_config").get("name"))
            if weaker and r["robust_accuracy"] < wb["robust_accuracy"] - _tol(r, wb):
                flags.append(
                    Flag(
                        "weaker-knowledge-stronger",
                        f"{d} / {m} / {df} / {a}: the {name} attacker leaves accuracy {r['robust_accuracy']:.4f}, "
                        f"lower than the white-box one ({wb['robust_accuracy']:.4f}): white-box gradients may be masked",
                    )
                )
    return flags
