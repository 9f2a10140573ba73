"""Private helpers of the file-backed dataset plugins (mnist, fashion-mnist, cifar-10, imagenet-folder).

Why this module exists: every real dataset needs the same four things, and getting any of
them subtly wrong produces either a numpy traceback instead of an actionable message or,
worse, a security hole:

* **locating files** -- one resolution order for every dataset (``data_dir`` config field,
  else ``$ADVX_DATA/<name>/``, else the per-user cache), so a spec that works on one
  machine works on another by setting one variable;
* **download + checksum** -- files fetched from the network are verified against the
  published md5 *before* they are moved into place, so a truncated or tampered download
  never becomes a cached "dataset";
* **IDX parsing** -- the header is checked against the file size, so a truncated file is
  a one-line ``DataError`` naming the file, not a ``reshape`` error;
* **a restricted unpickler** -- CIFAR-10 ships as pickles, and ``pickle.load`` on a file
  from the internet executes whatever it names. ``SafeUnpickler`` admits the three numpy
  callables an array pickle needs and nothing else.

Imports only advx's public API (plus numpy/pydantic/stdlib), like any third-party plugin.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from pydantic import Field

from advx import DataError, DatasetConfig

#: seconds urllib waits on a socket operation; short, so that an offline machine fails fast
NETWORK_TIMEOUT = 10.0


class FileDatasetConfig(DatasetConfig):
    """Options shared by every dataset read from files (base of their nested ``Config``)."""

    data_dir: str | None = Field(
        None,
        json_schema_extra={"identity": False},  # where the files are, not which data
        description=(
            "directory holding the files (searched directly and in <data_dir>/<dataset name>/); "
            "default: $ADVX_DATA/<dataset name>, else ~/.cache/advx/data/<dataset name>"
        ),
    )
    download: bool = Field(
        True,
        json_schema_extra={"identity": False},  # where the files are, not which data
        description="download missing files from the canonical source (md5-verified) when the network is reachable",
    )
    verify_checksums: bool = Field(
        False,
        json_schema_extra={"identity": False},  # where the files are, not which data
        description=(
            "also check the md5 of files found locally against the official one (downloads are always "
            "checked; local files are always checked for structure)"
        ),
    )


# -- errors -------------------------------------------------------------------------------


def one_line(text: object) -> str:
    """``text`` with all whitespace runs (newlines included) collapsed: errors are one line."""
    return " ".join(str(text).split())


def data_error(path: Path | str, problem: str) -> DataError:
    return DataError(f"{path}: {one_line(problem)}")


# -- locating -----------------------------------------------------------------------------


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/advx/data`` or ``~/.cache/advx/data``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "advx" / "data"


def search_dirs(name: str, data_dir: str | None, subdirs: Sequence[str] = ()) -> list[Path]:
    """Directories where dataset ``name`` is looked for, in order.

    ``data_dir`` (when given) is searched directly and as ``data_dir/<name>`` so that both
    ``data/mnist`` and ``data`` work; otherwise ``$ADVX_DATA/<name>``, otherwise the user
    cache. ``subdirs`` are extra relative folders tried inside each (e.g. the
    ``cifar-10-batches-py`` folder of an extracted tarball).
    """
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        bases = [root, root / name]
    elif os.environ.get("ADVX_DATA"):
        bases = [Path(os.environ["ADVX_DATA"]).expanduser() / name]
    else:
        bases = [cache_root() / name]
    dirs: list[Path] = []
    for b in bases:
        for d in (b, *(b / s for s in subdirs)):
            if d not in dirs:
                dirs.append(d)
    return dirs


def download_dir(name: str, data_dir: str | None) -> Path:
    """Where downloads go: ``data_dir/<name>`` if that folder exists, else ``data_dir``;
    ``$ADVX_DATA/<name>``; or the user cache."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return root / name if (root / name).is_dir() else root
    return search_dirs(name, None)[0]


def find_file(candidates: Sequence[str], dirs: Sequence[Path]) -> Path | None:
    """The first existing regular file named one of ``candidates`` in ``dirs``."""
    for d in dirs:
        for c in candidates:
            p = d / c
            if p.is_file():
                return p
    return None


def files_fingerprint(paths: Sequence[Path]) -> list[str]:
    """MD5 of each file (cached per path, size and modification time): a dataset's fingerprint."""
    return [_md5_cached(*_file_key(Path(p))) for p in paths]


@functools.lru_cache(maxsize=64)
def _md5_cached(path: str, mtime_ns: int, size: int) -> str:
    return md5sum(Path(path))


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- downloading --------------------------------------------------------------------------


def http_get(url: str, dest: Path, timeout: float = NETWORK_TIMEOUT) -> None:
    """Stream ``url`` into ``dest``. The single network entry point (tests replace it)."""
    req = urllib.request.Request(url, headers={"User-Agent": "advx"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:
        shutil.copyfileobj(resp, out, 1 << 20)


@dataclass
class Remote:
    """A downloadable file: its name, published md5, and mirror base URLs tried in order."""

    filename: str
    md5: str
    mirrors: Sequence[str]


def download_verified(remote: Remote, dest_dir: Path) -> Path:
    """Download ``remote`` into ``dest_dir`` from the first mirror that serves the right bytes.

    The file is written to a temporary name in ``dest_dir`` and renamed into place only after
    its md5 matches, so an interrupted or tampered download never looks like a dataset.
    Raises ``_NetworkUnavailable`` when no mirror could be reached at all, and ``DataError``
    when a mirror served bytes with the wrong checksum (and no other mirror served good ones).
    """
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise data_error(dest_dir, f"cannot create the download directory ({exc})") from None
    final = dest_dir / remote.filename
    reach_errors: list[str] = []
    bad_md5: list[str] = []
    for base in remote.mirrors:
        url = base.rstrip("/") + "/" + remote.filename
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{remote.filename}.", suffix=".part", dir=dest_dir)
        except OSError as exc:
            raise data_error(dest_dir, f"cannot write the download here ({exc}); set data_dir or ADVX_DATA to a writable folder") from None
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            try:
                http_get(url, tmp)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reach_errors.append(f"{url}: {one_line(getattr(exc, 'reason', exc))}")
                continue
            got = md5sum(tmp)
            if got != remote.md5:
                bad_md5.append(f"{url} gave md5 {got}, expected {remote.md5}")
                continue
            os.replace(tmp, final)
            return final
        finally:
            if tmp.exists():
                tmp.unlink()
    if bad_md5:
        raise DataError(
            f"{final}: checksum mismatch on download ({'; '.join(bad_md5)}); the file was not kept"
        )
    raise _NetworkUnavailable("; ".join(reach_errors))


class _NetworkUnavailable(Exception):
    """No mirror could be reached (offline, DNS failure, HTTP error): report as missing files."""


def missing_error(
    name: str, missing: Iterable[str], dirs: Sequence[Path], reason: str, hint: str = ""
) -> DataError:
    """The one-line error for files that are neither present nor downloadable."""
    where = ", ".join(str(d) for d in dirs)
    msg = (
        f"dataset {name!r}: missing {', '.join(missing)}; looked in {where}; {reason}. "
        f"Put the files in one of those directories, set the config field data_dir or the "
        f"environment variable ADVX_DATA (files under $ADVX_DATA/{name}/), or enable the network "
        f"and download=true"
    )
    if hint:
        msg += f"; {hint}"
    return DataError(one_line(msg))


@dataclass
class Archive:
    """A downloadable archive that holds several of a dataset's files (CIFAR-10's tarball).

    ``members`` maps a member path inside the archive to the file name it is extracted to
    (every member worth keeping, not only the ones asked for, so one download serves all).
    """

    remote: Remote
    members: dict[str, str]


def locate_or_download(
    name: str,
    files: dict[str, Sequence[str]],
    config: FileDatasetConfig,
    official_md5: dict[str, str] | None = None,
    remotes: dict[str, Remote] | None = None,
    archive: Archive | None = None,
    subdirs: Sequence[str] = (),
    hint: str = "",
) -> dict[str, Path]:
    """Paths of the logical ``files`` (key -> accepted file names, canonical first).

    Missing files are downloaded, one by one from ``remotes`` or all at once from
    ``archive``. Downloads are always md5-checked; files found locally are checked against
    ``official_md5`` (keyed like ``files``, for the canonical name) only with
    ``verify_checksums``: their structure is checked by the parsers anyway.
    """
    dirs = search_dirs(name, config.data_dir, subdirs)
    official_md5 = official_md5 or {}
    found: dict[str, Path] = {}
    for key, candidates in files.items():
        p = find_file(candidates, dirs)
        if p is None:
            continue
        found[key] = p
        if config.verify_checksums and key in official_md5 and p.name == candidates[0]:
            got = md5sum(p)
            if got != official_md5[key]:
                raise data_error(
                    p, f"md5 {got} differs from the official {official_md5[key]} (verify_checksums is on)"
                )
    missing = [k for k in files if k not in found]
    if not missing:
        return found
    names = [files[k][0] for k in missing]
    if not config.download:
        raise missing_error(name, names, dirs, "download is disabled", hint)
    dest = download_dir(name, config.data_dir)
    created = _missing_folders(dest)
    try:
        if archive is not None:
            tar_path = download_verified(archive.remote, dest)
            # files already in dest are the user's: extract only what is not there
            wanted = {m: out for m, out in archive.members.items() if not (dest / out).exists()}
            try:
                extract_members(tar_path, wanted, dest)
            finally:
                tar_path.unlink(missing_ok=True)
            for key in missing:
                p = dest / files[key][0]
                if not p.is_file():
                    raise data_error(tar_path, f"the archive holds no {files[key][0]}")
                found[key] = p
        else:
            for key in missing:
                if remotes is None or key not in remotes:
                    raise missing_error(name, names, dirs, "no download source is known for them", hint)
                found[key] = download_verified(remotes[key], dest)
    except _NetworkUnavailable as exc:
        _remove_if_empty(created)
        raise missing_error(name, names, dirs, f"download failed ({exc})", hint) from None
    except BaseException:
        _remove_if_empty(created)
        raise
    return found


def _missing_folders(path: Path) -> list[Path]:
    """The folders of ``path`` (itself included) that do not exist yet, deepest first."""
    out = []
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def _remove_if_empty(folders: Sequence[Path]) -> None:
    """Remove the folders a failed download created, deepest first, where nothing was put in
    them: a spec whose data is neither present nor downloadable leaves no folder behind (an
    ``ADVX_DATA`` pointing nowhere stays pointing nowhere)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (a file was kept), or not ours to remove
            return


# -- IDX (MNIST family) -------------------------------------------------------------------

IDX_DTYPES = {0x08: np.uint8}


def read_gzip(path: Path) -> bytes:
    """The decompressed bytes of ``path`` (plain bytes when it is not gzipped)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise data_error(path, f"corrupted or truncated gzip ({exc})") from None


def parse_idx(data: bytes, path: Path, magic: int) -> np.ndarray:
    """An IDX array from ``data``, after checking the magic number and that sizes match."""
    if len(data) < 4:
        raise data_error(path, f"too short for an IDX file ({len(data)} bytes)")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise data_error(path, f"wrong IDX magic number {got}, expected {magic}; is this the right file?")
    dtype = IDX_DTYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise data_error(path, f"truncated IDX header ({len(data)} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64)) * np.dtype(dtype).itemsize
    if len(data) != expected:
        shape = "x".join(map(str, dims))
        raise data_error(
            path, f"IDX header says {shape} ({expected} bytes) but the file has {len(data)} bytes; truncated or corrupted"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def load_idx_pair(images: Path, labels: Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) uint8 and labels (N,) uint8 of an IDX pair, cached per process.

    The cache is keyed on path, mtime and size, so replacing a file is noticed, and a matrix
    of many cells parses each file once. The arrays are read-only: callers copy.
    """
    return _load_idx_pair(_file_key(images), _file_key(labels), num_classes)


@lru_cache(maxsize=8)
def _load_idx_pair(img_key, lbl_key, num_classes):
    img_path, lbl_path = Path(img_key[0]), Path(lbl_key[0])
    x = parse_idx(read_gzip(img_path), img_path, 2051)
    y = parse_idx(read_gzip(lbl_path), lbl_path, 2049)
    if len(x) != len(y):
        raise DataError(f"{img_path} has {len(x)} images but {lbl_path} has {len(y)} labels")
    if y.size and int(y.max()) >= num_classes:
        raise data_error(lbl_path, f"label {int(y.max())} out of range for {num_classes} classes")
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


# -- restricted unpickling (CIFAR) ----------------------------------------------------------


class _Refused(pickle.UnpicklingError):
    """The pickle names something the restricted unpickler does not admit."""


def _latin1_encode(text: object, encoding: object = "latin1", *rest: object) -> bytes:
    """The only use of ``_codecs.encode`` in a protocol-2 pickle written by Python 3.

    Python 3 pickles ``bytes`` at protocol 2 as ``_codecs.encode(str, 'latin1')`` (the
    originals, written by Python 2, use plain string opcodes instead). Admitting the real
    ``_codecs.encode`` would be harmless but open-ended; this accepts exactly that call.
    """
    if rest or not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("refusing _codecs.encode with other than (str, 'latin1')")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], object]:
    # Obtain numpy's reconstructor from an array's own __reduce__ rather than importing
    # numpy.core (deprecated in numpy 2) or numpy._core (private); both spellings are
    # accepted because files pickled by numpy 1.x name numpy.core, by 2.x numpy._core.
    reconstruct = np.zeros(1).__reduce__()[0]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = reconstruct
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


_ALLOWED = _allowed_globals()


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild dicts/lists/numbers/strings and numpy arrays, nothing else.

    ``find_class`` is the only way a pickle reaches code; it returns one of three numpy
    objects (the array reconstructor, ``ndarray``, ``dtype``) or a latin1-only stand-in for
    ``_codecs.encode`` (how Python 3 writes bytes at protocol 2), and refuses every other
    name, so ``os.system`` or ``builtins.eval`` in a ``__reduce__`` is never even imported.
    """

    def find_class(self, module: str, name: str):  # noqa: D401
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise _Refused(f"refusing to load global {module}.{name}")
        return obj

    def persistent_load(self, pid):
        raise _Refused("refusing persistent ids")


def safe_unpickle(data: bytes, path: Path) -> object:
    """Unpickle ``data`` with ``SafeUnpickler`` (``encoding='bytes'``); ``DataError`` on anything odd."""
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as exc:
        raise data_error(path, f"unexpected pickle content: {exc}; not a CIFAR batch, refusing it") from None
    except Exception as exc:  # noqa: BLE001 - truncated/garbled pickles raise many types
        raise data_error(path, f"corrupted or truncated pickle ({type(exc).__name__}: {exc})") from None


def _text_keys(d: dict) -> dict[str, object]:
    out = {}
    for k, v in d.items():
        out[k.decode("latin1") if isinstance(k, bytes) else str(k)] = v
    return out


def load_cifar_batch(path: Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one CIFAR batch, cached per process."""
    return _load_cifar_batch(_file_key(path), num_classes)


@lru_cache(maxsize=8)
def _load_cifar_batch(key, num_classes):
    path = Path(key[0])
    obj = safe_unpickle(path.read_bytes(), path)
    if not isinstance(obj, dict):
        raise data_error(path, f"expected a pickled dict, got {type(obj).__name__}")
    d = _text_keys(obj)
    if "data" not in d or "labels" not in d:
        raise data_error(path, f"a CIFAR batch has keys 'data' and 'labels'; found {sorted(d)}")
    data, labels = d["data"], d["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise data_error(path, f"'data' must be a uint8 array of shape (N, 3072), got {desc}")
    if not isinstance(labels, (list, tuple, np.ndarray)) or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels
    ):
        raise data_error(path, "'labels' must be a list of integers")
    y = np.asarray(labels, dtype=np.int64)
    if len(y) != len(data):
        raise data_error(path, f"{len(data)} images but {len(y)} labels")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise data_error(path, f"labels must be within 0..{num_classes - 1}, found {y.min()}..{y.max()}")
    x = data.reshape(-1, 3, 32, 32)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


# -- safe tar extraction --------------------------------------------------------------------


def extract_members(tar_path: Path, wanted: dict[str, str], dest: Path) -> list[Path]:
    """Copy the regular-file members named in ``wanted`` (member path -> output name) to ``dest``.

    Output names come from ``wanted``, never from the archive, and only regular files are
    read, so absolute paths, ``..`` components, links and devices in a hostile archive can
    write nothing outside ``dest``.
    """
    written = []
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            for member in tar:
                out_name = wanted.get(member.name)
                if out_name is None or not member.isreg():
                    continue
                if "/" in out_name or out_name in ("", ".", ".."):
                    raise ValueError(f"bad output name {out_name!r}")
                src = tar.extractfile(member)
                if src is None:
                    continue
                fd, tmp_name = tempfile.mkstemp(prefix=f".{out_name}.", suffix=".part", dir=dest)
                with os.fdopen(fd, "wb") as out, src:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.replace(tmp_name, dest / out_name)
                written.append(dest / out_name)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise data_error(tar_path, f"cannot extract ({exc})") from None
    return written
