"""Fixtures of the dataset-plugin tests: isolation from the network and the user's data dirs.

Every test here runs with the network *off* (the single network entry point,
``_files.http_get``, is replaced by one that fails as an offline machine would) and with
``ADVX_DATA``/``XDG_CACHE_HOME`` pointing into ``tmp_path``, so no test reads a developer's
cache or downloads anything. Tests that exercise downloads install a fake server with
``serve``.
"""

from __future__ import annotations

import importlib.util
import shutil
import urllib.error
from pathlib import Path

import pytest

from advx.plugins.datasets import _files


def _load_formats():
    # The suite runs with --import-mode=importlib, where a test module cannot import a
    # sibling file by name; the writers are loaded here once and handed out as a fixture.
    spec = importlib.util.spec_from_file_location("advx_tests_ds_formats", Path(__file__).with_name("ds_formats.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_FORMATS = _load_formats()


@pytest.fixture
def fmt():
    """The file-format writers of ``ds_formats.py`` (IDX, CIFAR batches) and ``assert_one_line``."""
    return _FORMATS


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No network, no ADVX_DATA, a private cache directory; returns the cache root."""
    monkeypatch.delenv("ADVX_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))

    def offline(url, dest, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(_files, "http_get", offline)
    return tmp_path / "xdg-cache" / "advx" / "data"


@pytest.fixture
def serve(monkeypatch):
    """Install a fake network: ``serve({url: bytes_or_path})``; returns the list of URLs fetched.

    URLs not in the map fail like an unreachable host (so mirror fallback is testable).
    """
    fetched: list[str] = []

    def install(table: dict[str, bytes | Path]):
        def fake_get(url, dest, timeout=None):
            fetched.append(url)
            if url not in table:
                raise urllib.error.URLError("unreachable")
            src = table[url]
            if isinstance(src, Path):
                shutil.copyfile(src, dest)
            else:
                Path(dest).write_bytes(src)

        monkeypatch.setattr(_files, "http_get", fake_get)
        return fetched

    return install
