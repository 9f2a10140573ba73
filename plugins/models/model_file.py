"""``file``: a model saved whole, as a TorchScript archive or a ``torch.export`` program.

Neither needs the user's code: a TorchScript archive (``torch.jit.save`` of a scripted or
traced module) carries its TorchScript code and tensors and is read by ``torch.jit.load``;
a ``torch.export`` program (``torch.export.save``, ``.pt2``) carries its graph as JSON and
its tensors, and ``.module()`` of the loaded program is what is evaluated (input
gradients flow through it, as attacks need). The format is told by the archive's
content, or forced with ``format``; a file of any other kind is refused, and a
``torch.save`` pickle of a whole module in particular is never unpickled (it would import
and run the code it names; give its ``state_dict`` to model ``python`` instead).

``torch.export.load`` unpickles some entries of a program when asked to (pickled
weights or constants, custom objects) and falls back to an unrestricted ``torch.load``
when a restricted one fails. advx reads the program's tables first and refuses any entry
stored as a pickle or any file outside a plain program (compiled AOTInductor code), then
loads it with every ``torch.load`` forced to ``weights_only=True``
(``TORCH_FORCE_WEIGHTS_ONLY_LOAD``), so no file can run code.

An exported program cannot be put in eval or train mode (``torch.export`` fixes that when
it captures the graph); it is held by a module that keeps it out of ``train()``/``eval()``
calls. A program exported in training mode (dropout on, batch statistics) is caught by
the probe of ``_loaded`` when built. Programs must be exported with a dynamic batch
dimension (``dynamic_shapes``), since advx evaluates batches of any size.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from advx import ConfigError, DatasetInfo, hookimpl

from ._loaded import AdapterConfig, HashedFileConfig, PretrainedModel, adapt, checked_file, first_line, sha256_field

#: what a plain exported program holds (relative to the archive's root folder)
EXPORT_ENTRIES = ("archive_format", "archive_version", "byteorder", ".data/", "models/", "data/weights/", "data/constants/", "data/sample_inputs/", "extra/")


class FileConfig(AdapterConfig, HashedFileConfig):
    hashed_field: ClassVar[str] = "path"

    path: str = Field(description="path of a TorchScript archive (torch.jit.save) or a torch.export program (torch.export.save, .pt2)")
    format: Literal["auto", "torchscript", "export"] = Field("auto", description="the file's format; auto: told by its content")
    sha256: str | None = sha256_field("the file")


class ExportedProgramModule(nn.Module):
    """An exported program's module, kept out of ``train()``/``eval()`` (which it refuses).

    Its mode was fixed when the graph was captured; its submodules' ``training`` flags are
    set false so that the kernel's eval-mode check reads what the graph does.
    """

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program
        for m in program.modules():
            m.training = False

    def forward(self, *args: Tensor) -> object:
        return self.program(*args)

    def train(self, mode: bool = True) -> ExportedProgramModule:
        self.training = mode
        return self


def detect_format(plugin: str, path: str) -> str:
    """``"torchscript"`` or ``"export"`` from the archive's entries; anything else is refused."""
    if not zipfile.is_zipfile(path):
        raise ConfigError(f'model "{plugin}": path: {path!r} is not a TorchScript or torch.export archive (not a complete zip file: truncated, or another format)')
    with zipfile.ZipFile(path) as zf:
        rel = {n.split("/", 1)[1] for n in zf.namelist() if "/" in n}
        fmt = next((n for n in zf.namelist() if n.endswith("/archive_format") and n.count("/") == 1), None)
        if fmt is not None and zf.read(fmt).strip() == b"pt2":
            return "export"
    if any(r.startswith("code/") for r in rel) and "constants.pkl" in rel:
        return "torchscript"
    if "data.pkl" in rel:
        raise ConfigError(
            f'model "{plugin}": path: {path!r} is a torch.save pickle, which advx never unpickles as a model (it would run the code it names); '
            'save it with torch.jit.save or torch.export.save, or give its state_dict as weights to model "python"'
        )
    raise ConfigError(f'model "{plugin}": path: {path!r} is a zip archive, but neither a TorchScript archive nor a torch.export program')


def check_export_archive(plugin: str, path: str) -> None:
    """Refuse a program with anything ``torch.export.load`` would unpickle or execute."""
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                rel = name.split("/", 1)[1] if "/" in name else name
                if rel and not rel.startswith(EXPORT_ENTRIES):
                    raise ConfigError(f'model "{plugin}": path: {path!r} holds {rel!r}, which is not part of a plain exported program (compiled code?); refused')
                is_weights = rel.startswith("data/weights/") and rel.endswith("_weights_config.json")
                if not (is_weights or (rel.startswith("data/constants/") and rel.endswith("_constants_config.json"))):
                    continue
                for entry, meta in json.loads(zf.read(name)).get("config", {}).items():
                    if meta.get("use_pickle") or not (is_weights or str(meta.get("path_name", "")).startswith("tensor_")):
                        raise ConfigError(f'model "{plugin}": path: {path!r} stores {entry!r} as a pickled object, which advx does not unpickle; refused')
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged archive
        raise ConfigError(f'model "{plugin}": path: cannot read {path!r} ({first_line(exc)})') from None


@contextmanager
def forced_weights_only() -> Iterator[None]:
    """Every ``torch.load`` inside runs with ``weights_only=True``, whatever its caller asks."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def load_file(plugin: str, path: str, fmt: str) -> nn.Module:
    """The module saved in ``path`` (format already decided)."""
    if fmt == "torchscript":
        try:
            return torch.jit.load(path, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - truncated or not TorchScript
            raise ConfigError(f'model "{plugin}": path: cannot load {path!r} as TorchScript ({first_line(exc)})') from None
    check_export_archive(plugin, path)
    try:
        with forced_weights_only():
            program = torch.export.load(path)
        return ExportedProgramModule(program.module())
    except Exception as exc:  # noqa: BLE001 - truncated, not a program, or refused by weights_only
        raise ConfigError(f'model "{plugin}": path: cannot load {path!r} as a torch.export program ({first_line(exc)})') from None


class FileModel(PretrainedModel):
    """A TorchScript archive or torch.export program, loaded without any code of yours."""

    name: ClassVar[str] = "file"
    Config = FileConfig

    def build(self, info: DatasetInfo) -> nn.Module:
        c = self.config
        path = checked_file(self.name, "path", c.path, c.sha256)
        fmt = detect_format(self.name, path) if c.format == "auto" else c.format
        return adapt(self.name, load_file(self.name, path, fmt), c, info)


@hookimpl
def advx_register_models():
    return [FileModel]
