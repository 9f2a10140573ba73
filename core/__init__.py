"""advx: plugin-based adversarial robustness evaluation.

The public API. Plugins (built-in ones included) import only from here. Names are
resolved lazily (PEP 562): ``import advx`` and the CLI's ``--version`` and ``--help``
do not import torch; the first use of a name imports the module that defines it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # _version
    # allocator
    "tune_cpu_allocator": ".allocator",
    # context
    "DefenseContext": ".context",
    "TrainRecord": ".context",
    # crafting
    "PassCounter": ".crafting",
    # data
    "as_tensor_dataset": ".data",
    "dataset_labels": ".data",
    "iter_batches": ".data",
    "load_split": ".data",
    "take": ".data",
    # engine
    "Cell": ".engine",
    "Executor": ".engine",
    "InProcessExecutor": ".engine",
    "MatrixResult": ".engine",
    "MultiDeviceExecutor": ".engine",
    "plan": ".engine",
    "run_matrix": ".engine",
    # errors
    "AdvxError": ".errors",
    "BudgetViolationError": ".errors",
    "ConfigError": ".errors",
    "DataError": ".errors",
    "ModelCheckError": ".errors",
    "PluginConflictError": ".errors",
    "PluginLoadError": ".errors",
    "PluginNotFoundError": ".errors",
    # embedding
    "AttackReport": ".embedding",
    "evaluate": ".embedding",
    "run_attack": ".embedding",
    # guards
    "check_budget": ".guards",
    "check_model": ".guards",
    # hookspecs
    "hookimpl": ".hookspecs",
    "hookspec": ".hookspecs",
    # interfaces
    "Attack": ".interfaces",
    "AttackConfig": ".interfaces",
    "Classifier": ".interfaces",
    "Dataset": ".interfaces",
    "DatasetConfig": ".interfaces",
    "DatasetInfo": ".interfaces",
    "Defense": ".interfaces",
    "DefenseConfig": ".interfaces",
    "Model": ".interfaces",
    "ModelConfig": ".interfaces",
    "Normalize": ".interfaces",
    "NormalizedModel": ".interfaces",
    "Plugin": ".interfaces",
    "PluginConfig": ".interfaces",
    "input_gradient": ".interfaces",
    # joint
    "TrainRequest": ".joint",
    "architecture_signature": ".joint",
    # labels
    "resolve_labels": ".labels",
    # protocols
    "bpda": ".protocols",
    "Detector": ".protocols",
    "Ensemble": ".protocols",
    "InputTransform": ".protocols",
    # registry
    "LoadFailure": ".registry",
    "PluginEntry": ".registry",
    "Registry": ".registry",
    # report
    "write_report": ".report",
    # results
    "ResultStore": ".results",
    # spec
    "MatrixOptions": ".spec",
    "MatrixSpec": ".spec",
    # threats
    "ThreatConfig": ".threats",
    "ThreatModel": ".threats",
    # training
    "accuracy": ".training",
    "applies_normalization": ".training",
    "background_value": ".training",
    "build_model": ".training",
    "train_model": ".training",
    "TrainConfig": ".training",
    "TrainResult": ".training",
}

#: submodules reachable as attributes (``advx.metrics.METRICS``) without an explicit import
_SUBMODULES = frozenset(
    {
        "allocator", "cli", "context", "crafting", "data", "embedding", "engine", "errors", "flags", "guards", "hookspecs",
        "interfaces", "labels", "metrics", "pipeline", "protocols", "registry", "report", "results", "schema", "scoring", "spec",
        "testing", "threats", "training",
    }
)

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'advx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | _SUBMODULES)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .context import DefenseContext, TrainRecord
    from .crafting import PassCounter
    from .data import as_tensor_dataset, dataset_labels, iter_batches, load_split, take
    from .engine import Cell, Executor, InProcessExecutor, MatrixResult, MultiDeviceExecutor, plan, run_matrix
    from .errors import AdvxError, BudgetViolationError, ConfigError, DataError, ModelCheckError, PluginConflictError, PluginLoadError, PluginNotFoundError
    from .embedding import AttackReport, evaluate, run_attack
    from .guards import check_budget, check_model
    from .joint import TrainRequest, architecture_signature
    from .hookspecs import hookimpl, hookspec
    from .interfaces import Attack, AttackConfig, Classifier, Dataset, DatasetConfig, DatasetInfo, Defense, DefenseConfig, Model, ModelConfig, Normalize, NormalizedModel, Plugin, PluginConfig, input_gradient
    from .labels import resolve_labels
    from .protocols import Detector, Ensemble, InputTransform, bpda
    from .registry import LoadFailure, PluginEntry, Registry
    from .report import write_report
    from .results import ResultStore
    from .spec import MatrixOptions, MatrixSpec
    from .threats import ThreatConfig, ThreatModel
    from .training import TrainConfig, TrainResult, accuracy, applies_normalization, background_value, build_model, train_model
