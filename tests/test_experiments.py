"""The repository names no folder of the machine it was written on: specs read their data from
``ADVX_DATA`` or the cache, as users' specs do, and documents and tests give no absolute path
that exists only on the development machine."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: top-level folders of development machines (spelled apart so this file does not match itself)
MACHINE_ROOTS = ("work", "root", "home", "Users")
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:" + "|".join(MACHINE_ROOTS) + r")/[\w.-]")
TEXT = {".md", ".toml", ".py", ".txt", ".json", ".cfg", ".ini", ".sh", ".yml", ".yaml", ".html", ".csv"}
SKIP = {"__pycache__", "build", "dist", ".pytest_cache"}
#: stored results of runs: their dataset config records the data folder the run read (provenance
#: of what was measured, rewritten only by exporting a new run)
RECORDS = ROOT / "experiments" / "results"


def scanned_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in ("experiments", "docs", "tests"):
        for p in sorted((ROOT / top).rglob("*")):
            if p.is_file() and p.suffix in TEXT and RECORDS not in p.parents:
                if not any(part in SKIP or part.endswith(".egg-info") for part in p.relative_to(ROOT).parts):
                    files.append(p)
    return files


def test_no_file_names_a_folder_of_the_development_machine():
    files = scanned_files()
    assert len(files) > 50 and any(p.suffix == ".toml" for p in files)
    hits = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()[:100]}"
        for p in files
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if MACHINE_PATH.search(line)
    ]
    assert not hits, "machine paths (use ADVX_DATA, a relative path or a placeholder):\n" + "\n".join(hits)


def test_the_machine_path_pattern_finds_absolute_paths_only():
    for found in ('data_dir = "/' + 'work/shared/data/mnist"', "ADVX_DATA=/" + "home/me/data advx run", "cd /" + "root/x"):
        assert MACHINE_PATH.search(found), found
    for kept in ("ADVX_DATA=DIR", "~/" + "home/x", "experiments/" + "work/x", "https://example.org/" + "home/x", "../shared/data"):
        assert not MACHINE_PATH.search(kept), kept


# --- the index of experiments/README.md ------------------------------------------------------

EXPERIMENTS = ROOT / "experiments"


def index_rows() -> list[tuple[str, str, list[str]]]:
    """(study folder heading, file, the row's cells) of every row between the index markers."""
    text = (EXPERIMENTS / "README.md").read_text()
    section = text[text.index("<!-- index -->") : text.index("<!-- /index -->")]
    rows, study = [], ""
    for line in section.splitlines():
        heading = re.match(r"### `([^`]+)/`", line)
        if heading:
            study = heading.group(1)
        row = re.match(r"\| `([^`]+)` \|(.*)\|$", line)
        if row:
            rows.append((study, row.group(1), [c.strip() for c in row.group(2).split("|")]))
    return rows


def study_files() -> list[str]:
    """Every spec and script under experiments/ but the document's renderer and the stored results."""
    return sorted(
        str(p.relative_to(EXPERIMENTS))
        for p in EXPERIMENTS.rglob("*")
        if p.suffix in (".toml", ".py") and p.parent != EXPERIMENTS and "results" not in p.relative_to(EXPERIMENTS).parts
    )


def test_every_spec_lives_in_a_study_folder():
    loose = sorted(p.name for p in EXPERIMENTS.glob("*.toml") if p.name != "reproductions.toml")
    assert not loose, f"put these in a study folder: {loose}"


def test_the_index_lists_every_study_file_once_and_only_files_that_exist():
    rows = index_rows()
    listed = [f for _, f, _ in rows]
    files = study_files()
    assert len(files) > 30
    missing, stale = sorted(set(files) - set(listed)), sorted(set(listed) - set(files))
    assert not missing, f"experiments/README.md does not list {missing}"
    assert not stale, f"experiments/README.md lists files that do not exist: {stale}"
    assert len(listed) == len(set(listed)), "a file is listed twice"


def test_each_index_row_sits_under_its_study_and_says_what_kind_and_how_long():
    rows = index_rows()
    folders = sorted({p.parent.name for p in EXPERIMENTS.glob("*/*") if p.parent.name != "results"})
    assert sorted({study for study, _, _ in rows}) == folders  # one heading per study folder
    for study, file, cells in rows:
        assert file.startswith(study + "/"), f"{file} is listed under {study}/"
        assert len(cells) == 3 and all(cells), f"{file}: a row is | file | what it runs | kind | time |"


def test_spec_names_are_unique():
    import advx

    names: dict[str, str] = {}
    for f in study_files():
        if f.endswith(".toml"):
            name = advx.MatrixSpec.from_toml(EXPERIMENTS / f).matrix.name
            assert name not in names, f"{f} and {names[name]} are both named {name!r}: their results would mix"
            names[name] = f


def test_the_rotation_figure_is_drawn_from_the_stored_study_json(tmp_path):
    """``seed003-rotation/curves.py`` draws one panel per pair and attack of the stored JSON (the
    picture in docs/reproductions.md), and says so in one line for a file with no curves."""
    import importlib.util
    import json

    import pytest

    pytest.importorskip("matplotlib", reason="matplotlib is optional (advx[report])")
    spec = importlib.util.spec_from_file_location("curves", EXPERIMENTS / "seed003-rotation" / "curves.py")
    curves = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(curves)
    out = tmp_path / "c.png"
    assert curves.draw(curves.RESULTS, out) == 4
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (ROOT / "docs" / "images" / "seed003-rotation-curves.png").is_file()  # the committed picture
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"setup": {}}))
    with pytest.raises(SystemExit, match="holds no rotation curves"):
        curves.draw(empty, out)
