"""The matrix engine: datasets x models x defenses x threat models x attacks, cell by cell.

One concern per module, imported in this order (no cycles):

* ``plan``: a spec becomes ``Cell``s (every config validated, all errors reported together);
* ``devices``: device strings become checked ``torch.device``s;
* ``workspace``: per-process state shared by cells (plugins, data, trained and defended
  models, crafted examples), and the training records;
* ``execute``: one cell, from its models to its result row (never raises for cell errors);
* ``executors``: where cells run (in this process, one process per device);
* ``run``: ``run_matrix``, which plans, skips finished cells, executes and stores.
"""

from advx.engine.execute import CellOutcome, execute_cell
from advx.engine.executors import Executor, InProcessExecutor, MultiDeviceExecutor
from advx.engine.plan import Cell, plan
from advx.engine.run import DryRun, MatrixResult, dry_run, run_matrix
from advx.engine.workspace import Workspace

__all__ = [
    "Cell",
    "CellOutcome",
    "DryRun",
    "Executor",
    "InProcessExecutor",
    "MatrixResult",
    "MultiDeviceExecutor",
    "Workspace",
    "dry_run",
    "execute_cell",
    "plan",
    "run_matrix",
]
