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
