"""Benchmark: when does Square break an example, and what does a "hopeless" rule cost in
breaks? The evidence behind ``hopeless_after`` (issue 24, item 2).

Square's search is followed query by query, with no early exit (``Square.margins``: every
example's best margin after each of 5000 queries), on the examples that matter:

* the survivors of the suite's gradient members (APGD-CE, APGD-T, FAB-T; MALT, 3 targets),
  where Square runs inside the suite: ``digits`` (eps 0.1) and ``mnist-at`` (eps 0.3);
* Square alone on every correctly classified example, where it breaks many, some late:
  ``digits`` eps 0.1, ``mnist`` (undefended) eps 0.1, ``mnist-at`` eps 0.2 and 0.3.

Each example's search depends on the example alone (``Attack.noise``), so from one
trajectory the queries any stopping rule would spend, and the breaks it would lose (an
example it stops before the query that breaks it), follow exactly. Rules:

* ``average`` (Square's ``hopeless_after`` h): from query h * Q, an example leaves once its
  margin, decreasing at its average rate since the start, would not reach zero in the
  queries left (the rule implemented). One configuration is also run for real through
  ``Square`` to check that the simulation counts the same queries and breaks;
* ``recent`` (not implemented; the alternative considered): the same extrapolation from the
  rate over the last ``frac`` of the queries so far, times ``slack``.

Reported per set: the share of the no-rule queries each rule spends, and breaks lost of
breaks found. A rule is kept only where it loses no break on any set.

    python benchmarks/square_hopeless.py [--queries 5000]

Results: ``benchmarks/results/square-hopeless-cpu.json`` and ``.md``.
"""

from __future__ import annotations

import torch

import advx
from _meta import begin, finish, header, parser
from _models import load

SETS = [  # (model, eps, examples, where)
    ("digits", 0.1, 300, "suite"), ("mnist-at", 0.3, 200, "suite"),
    ("digits", 0.1, 300, "alone"), ("mnist", 0.1, 300, "alone"), ("mnist-at", 0.2, 500, "alone"), ("mnist-at", 0.3, 500, "alone"),
]


def trajectory(model, x, y, bounds, eps, queries):
    """``(Q + 1, N)``: each example's best margin after each query (the start first)."""
    sq = advx.Registry.discover().attack("square", eps=eps, queries=queries, early_exit=False)
    sq.margins = []
    sq.perturb(model, x, y, bounds)
    return torch.stack(sq.margins)


def average(h):
    def rule(L, i, q):
        if i < max(1, int(h * q)):
            return None
        m = L[i]
        return m * i <= (L[0] - m) * (q - i)

    return rule


def recent(h, frac, slack):
    def rule(L, i, q):
        if i < max(1, int(h * q)):
            return None
        j = int(i * (1 - frac))
        m = L[i]
        return m * (i - j) <= slack * (L[j] - m) * (q - i)

    return rule


RULES = {"none": lambda L, i, q: None}
RULES.update({f"average h={h}": average(h) for h in (0.02, 0.05, 0.1, 0.2)})
RULES.update({f"recent h={h} frac={f} slack={s}": recent(h, f, s) for h in (0.05, 0.1) for f in (0.25, 0.5) for s in (1.0, 2.0, 4.0)})


def simulate(L, rule):
    """Queries spent per example (early exit and ``rule``) and the breaks the rule loses."""
    q, n = L.shape[0] - 1, L.shape[1]
    broken = L <= 0
    broke_at = torch.where(broken.any(0), broken.float().argmax(0).long(), torch.full((n,), q + 1))
    active = torch.ones(n, dtype=torch.bool)
    left_at = torch.full((n,), q)
    for i in range(q):
        live = L[i] > 0
        keep = rule(L, i, q)
        if keep is not None:
            live &= keep
        leave = active & ~live
        left_at[leave] = i
        active &= live
        if not active.any():
            break
    spent = torch.minimum(left_at, broke_at)
    lost = int(((broke_at <= q) & (left_at < broke_at)).sum())
    return int(spent.sum()), lost, int((broke_at <= q).sum())


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--check", type=float, default=0.1, help="the hopeless_after run for real through Square, to check the simulation")
    args = ap.parse_args()
    args.models = "digits,mnist,mnist-at"
    meta = begin(args)
    reg = advx.Registry.discover()
    rows = []
    for mname, eps, n, where in SETS:
        model, x, y, bounds = load(mname, n)
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        x, y = x[ok], y[ok]
        if where == "suite":
            suite = reg.attack("suite", eps=eps, attacks=["apgd-ce", "apgd-t", "fab-t"], target_selection="malt", target_classes=3)
            suite.perturb(model, x, y, bounds)
            x, y = x[suite.broken_by == -1], y[suite.broken_by == -1]
        L = trajectory(model, x, y, bounds, eps, args.queries)
        row = {"model": mname, "eps": eps, "where": where, "n": len(y), "rules": {}}
        for name, rule in RULES.items():
            spent, lost, breaks = simulate(L, rule)
            row["rules"][name] = {"queries": spent, "lost": lost, "breaks": breaks}
        # the rule as implemented, run for real: the same queries and the same broken set
        sq = reg.attack("square", eps=eps, queries=args.queries, hopeless_after=args.check)
        counter = advx.PassCounter(model)
        out = sq.perturb(counter, x, y, bounds)
        with torch.no_grad():
            real_broken = int((model(out).argmax(1) != y).sum())
        sim = row["rules"][f"average h={args.check}"]
        row["check"] = {"hopeless_after": args.check, "queries_real": counter.forwards - len(y), "queries_simulated": sim["queries"],
                        "broken_real": real_broken, "broken_simulated": sim["breaks"] - sim["lost"]}
        rows.append(row)
        print(mname, eps, where, len(y), {k: v for k, v in row["rules"].items() if k in ("none", "average h=0.1")}, row["check"], flush=True)
    meta, md = finish(args, meta, "square-hopeless", rows, [], queries=args.queries)
    lines = header("Square: queries spent and breaks lost by hopeless-example rules", meta) + [
        f"Square L-inf, {args.queries} queries, followed query by query on each set's examples (see the script's docstring).",
        "Each cell: share of the queries spent without a rule (early exit only) / breaks lost of breaks found.",
        f"Check: `hopeless_after` {args.check} run for real through Square gives the simulated queries and broken examples (last column).",
        "",
        "| rule | " + " | ".join(f"{r['model']} eps {r['eps']}, {r['where']} ({r['n']})" for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for name in RULES:
        cells = []
        for r in rows:
            c, base = r["rules"][name], r["rules"]["none"]["queries"]
            cells.append(f"{c['queries'] / max(base, 1):.3f} / {c['lost']} of {c['breaks']}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    checks = "; ".join(
        f"{r['model']} {r['eps']} {r['where']}: queries {r['check']['queries_real']} real vs {r['check']['queries_simulated']} simulated, "
        f"broken {r['check']['broken_real']} vs {r['check']['broken_simulated']}" for r in rows
    )
    lines += ["", f"Check of the simulation: {checks}."]
    md.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
