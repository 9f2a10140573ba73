"""What the CLI prints where a newcomer reads it: piped into a log or `head`, at 80 columns.

Every test runs the command in a subprocess whose output is a pipe (not a terminal), as a
script or CI would, with ``COLUMNS`` set where the width matters.
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import advx
from advx.store.results import _csv_value

ATTACKS = [{"name": "fgsm", "eps": [0.1, 0.2]}, {"name": "bim", "eps": 0.1, "alpha": 0.02, "steps": 3}]


def advx_cli(*args: str, columns: str | None = "80") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    return subprocess.run([sys.executable, "-m", "advx", *args], capture_output=True, text=True, env=env, timeout=600)


def _spec_file(tmp_path, name="out") -> str:
    spec = tmp_path / f"{name}.toml"
    spec.write_text(
        f'[matrix]\nname = "{name}"\nsamples = 40\nbatch_size = 20\ncache_dir = "{tmp_path / "cache"}"\n'
        '[[datasets]]\nname = "digits"\n[[models]]\nname = "mlp"\ntrain = { epochs = 2 }\n'
        '[[attacks]]\nname = "fgsm"\neps = [0.1, 0.2]\n[[attacks]]\nname = "bim"\neps = 0.1\nalpha = 0.02\nsteps = 3\n'
    )
    return str(spec)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A results file of three cells (two FGSM, one BIM) and its rows."""
    tmp = tmp_path_factory.mktemp("results")
    db = tmp / "r.db"
    spec = {
        "matrix": {"name": "out", "samples": 40, "batch_size": 40, "cache_dir": str(tmp / "cache")},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp", "train": {"epochs": 1}}],
        "attacks": ATTACKS,
    }
    advx.run_matrix(spec, store=db)
    with advx.ResultStore(db, readonly=True) as store:
        return db, store.cells()


# -- item: progress where there is no terminal ---------------------------------------------------


def test_a_run_into_a_pipe_prints_plain_progress_lines_and_quiet_silences_them(tmp_path):
    spec, db = _spec_file(tmp_path), str(tmp_path / "r.db")
    out = advx_cli("run", spec, "--db", db)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "3 cells, 3 to run"
    assert "  training mlp: epoch 1/2, loss " in out.stdout and "  training mlp: epoch 2/2, loss " in out.stdout
    started = [i for i, ln in enumerate(lines) if re.match(r"\[\d/3\] cell started: digits / mlp / none / white-box / ", ln)]
    done = [i for i, ln in enumerate(lines) if re.match(r"\[\d/3\] cell done in [\d.]+s, robust acc \d\.\d{4}: digits / mlp", ln)]
    assert len(started) == len(done) == 3 and all(s < d for s, d in zip(started, done))
    # a cell's batches (two of 20 examples): at least its last, before the cell's end
    crafted = [i for i, ln in enumerate(lines) if ln.startswith("  [1/3] fgsm(eps=0.1): ") and ln.endswith(" examples crafted")]
    assert crafted and lines[crafted[-1]].endswith("40/40 examples crafted") and crafted[-1] < done[0]
    assert not any("\x1b" in ln or "━" in ln for ln in lines[: done[-1]])  # no bar, no escape codes in a log
    # --quiet: the results and the summary only
    quiet = advx_cli("run", spec, "--db", db, "--rerun", "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert "cell started" not in quiet.stdout and "training" not in quiet.stdout.split("┏")[0]
    assert "3 cells run, 0 skipped" in quiet.stdout and "robust" in quiet.stdout


# -- item: tables at 80 columns ------------------------------------------------------------------


def _numbers(row) -> list[str]:
    from advx.store.schema import TABLE_COLUMNS, format_value

    return [format_value(c.name, row.get(c.name)) for c in TABLE_COLUMNS if c.name not in ("dataset", "model", "defense", "threat", "attack") and row.get(c.name) is not None]


@pytest.mark.parametrize("columns", ["80", "60"])
def test_tables_fit_the_width_and_never_split_a_number(results, columns):
    db, rows = results
    out = advx_cli("results", str(db), "--breakdown", "confidence", "--worst-case", columns=columns)
    assert out.returncode == 0, out.stderr
    table = [ln for ln in out.stdout.splitlines() if ln[:1] in "┏┃│┡└"]
    assert table and max(len(ln) for ln in table) <= int(columns)
    body = [ln for ln in table if ln.startswith("│")]
    for r in rows:  # each row's numbers whole, on the row's line, in the order of its columns
        line = next(ln for ln in body if ln.startswith(f"│ {rows.index(r) + 1} │"))
        cells = [c.strip() for c in line.strip("│").split("│")]
        shown = [c for c in cells[2:] if c]
        assert shown == _numbers(r)[: len(shown)] and len(shown) >= 4  # n, clean, robust, success at least
    left = re.search(r"left out at (\d+) columns: ([^(]*)", " ".join(out.stdout.split()))
    assert left and left.group(1) == columns and "bwd/sample" in left.group(2)  # named, not silently dropped


def test_a_terminal_too_narrow_for_a_table_gets_records(results):
    db, rows = results
    out = advx_cli("results", str(db), columns="40")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    records = lines[: next(i for i, ln in enumerate(lines) if re.match(r"sanity checks|\d+ sanity flag", ln))]
    assert max(len(ln) for ln in records) <= 40 and not any(ln[:1] in "┏┃│" for ln in records)
    text = "\n".join(records)
    for i, r in enumerate(rows, 1):
        block = text.split(f"#{i} ")[1].split(f"#{i + 1} ")[0]
        assert block.startswith(r.attack)
        for (c, v) in zip(("n", "clean acc", "robust acc"), _numbers(r)):
            assert f" {c} {v}" in block  # every pair whole on one line, the left-out columns included
        assert " bwd/sample " in block


def test_dry_run_lines_fit_and_break_between_words(tmp_path):
    out = advx_cli("run", _spec_file(tmp_path), "--db", str(tmp_path / "r.db"), "--dry-run", columns="60")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert max(len(ln) for ln in lines[1:]) <= 60
    joined = " ".join(" ".join(lines).split())
    assert "run digits / mlp / none / white-box / bim(eps=0.1, alpha=0.02, steps=3)" in joined
    assert "train mlp on digits" in joined


# -- item: the CLI's small things ------------------------------------------------------------------


def test_plugins_name_shows_one_plugin_and_the_listing_is_grouped():
    one = advx_cli("plugins", "fgsm")
    assert one.returncode == 0, one.stderr
    assert one.stdout.startswith("fgsm (advx): ") and "eps: float = 0.3 (> 0)" in one.stdout
    assert "bim" not in one.stdout and "attack plugins" not in one.stdout
    every = advx_cli("plugins")
    headings = re.findall(r"^(\w+) plugins \((\d+)\)$", every.stdout, re.M)
    assert [h for h, _ in headings] == ["dataset", "model", "defense", "threat", "attack"]
    registry = advx.Registry.discover()
    for kind, count in headings:  # one line per plugin under its kind's heading
        assert int(count) == len(registry.entries(kind))
    assert re.search(r"^  fgsm +advx +Fast gradient sign method", every.stdout, re.M)
    assert len(every.stdout.splitlines()) < 100 and "eps: float" not in every.stdout
    unknown = advx_cli("plugins", "fgms")
    assert unknown.returncode == 1 and unknown.stdout == "" and unknown.stderr.count("\n") == 1
    assert unknown.stderr.startswith("[PluginNotFoundError]: no plugin kind or plugin named 'fgms' (did you mean 'fgsm'?)")


@pytest.mark.parametrize("args", [("plugins",), ("plugins", "attacks")])
def test_output_into_a_closed_pipe_ends_quietly(args):
    """``advx plugins | head``: the reader goes away before advx writes; no error, status 0."""
    proc = subprocess.Popen([sys.executable, "-m", "advx", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # closed long before advx has imported anything and printed
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0 and err == b""


def test_csv_numbers_have_no_float32_noise(results):
    db, _ = results
    out = advx_cli("results", str(db), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 3
    for r in rows:
        for name in ("clean_accuracy", "robust_accuracy"):  # k of 40 examples: at most three decimals
            assert re.fullmatch(r"[01]\.\d{1,3}", r[name]), (name, r[name])
        for name in ("mean_linf", "max_linf", "mean_l2"):  # the shortest text of the float32 stored
            assert r[name] == str(np.float32(r[name])) and len(r[name]) <= 12, (name, r[name])
    assert _csv_value(float(torch.tensor([1.0] * 984 + [0.0] * 16).mean())) == "0.984"
    assert _csv_value(12.345678901234) == "12.345678901234"  # a double keeps its digits
