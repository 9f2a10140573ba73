"""advx: plugin-based adversarial robustness evaluation.

The public API. Plugins (built-in ones included) import only from here.
"""

from ._version import __version__
from .data import as_tensor_dataset, dataset_labels, iter_batches, load_split, take
from .errors import (
    AdvxError,
    BudgetViolationError,
    ConfigError,
    DataError,
    ModelCheckError,
    PluginConflictError,
    PluginLoadError,
    PluginNotFoundError,
)
from .hookspecs import hookimpl, hookspec
from .interfaces import (
    Attack,
    AttackConfig,
    Classifier,
    Dataset,
    DatasetConfig,
    DatasetInfo,
    Defense,
    DefenseConfig,
    Model,
    ModelConfig,
    Normalize,
    NormalizedModel,
    Plugin,
    PluginConfig,
)
from .labels import resolve_labels
from .registry import LoadFailure, PluginEntry, Registry
from .context import DefenseContext, TrainRecord
from .crafting import PassCounter
from .engine import Cell, Executor, InProcessExecutor, MatrixResult, MultiDeviceExecutor, plan, run_matrix
from .evaluate import AttackReport, evaluate, run_attack
from .guards import check_budget, check_model
from .protocols import Detector, Ensemble, InputTransform, bpda
from .results import ResultStore
from .threats import THREATS, ThreatConfig, ThreatModel
from .spec import MatrixOptions, MatrixSpec
from .training import (
    TrainConfig,
    TrainResult,
    accuracy,
    applies_normalization,
    background_value,
    build_model,
    train_model,
)

__all__ = [
    "__version__",
    "AdvxError",
    "Attack",
    "AttackConfig",
    "BudgetViolationError",
    "Classifier",
    "ConfigError",
    "DataError",
    "Dataset",
    "DatasetConfig",
    "DatasetInfo",
    "Defense",
    "DefenseConfig",
    "LoadFailure",
    "Model",
    "ModelCheckError",
    "ModelConfig",
    "Normalize",
    "NormalizedModel",
    "Plugin",
    "PluginConfig",
    "PluginConflictError",
    "PluginEntry",
    "PluginLoadError",
    "PluginNotFoundError",
    "Registry",
    "as_tensor_dataset",
    "dataset_labels",
    "hookimpl",
    "hookspec",
    "iter_batches",
    "load_split",
    "resolve_labels",
    "take",
    "TrainConfig",
    "TrainResult",
    "accuracy",
    "build_model",
    "applies_normalization",
    "background_value",
    "train_model",
    "AttackReport",
    "PassCounter",
    "check_budget",
    "check_model",
    "evaluate",
    "run_attack",
    "Cell",
    "DefenseContext",
    "TrainRecord",
    "Detector",
    "Ensemble",
    "InputTransform",
    "bpda",
    "Executor",
    "InProcessExecutor",
    "MultiDeviceExecutor",
    "THREATS",
    "ThreatConfig",
    "ThreatModel",
    "MatrixResult",
    "plan",
    "run_matrix",
    "ResultStore",
    "MatrixOptions",
    "MatrixSpec",
]
