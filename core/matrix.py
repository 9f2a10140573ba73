"""The public API for engine users: plan and run attack x defense matrices, read their results.

What ``advx run`` does, from Python: a ``MatrixSpec`` (or a spec dict / TOML path) is
planned into cells, run by an executor, and every finished cell is a ``CellRow`` in a
``ResultStore``; ``write_report`` renders a results file.
"""

from __future__ import annotations

from ._lazy import tier

#: public name -> the module that defines it (one list: the tier of engine users)
EXPORTS: dict[str, str] = {
    "MatrixSpec": "advx.engine.spec",
    "MatrixOptions": "advx.engine.spec",
    "plan": "advx.engine.plan",
    "Cell": "advx.engine.plan",
    "run_matrix": "advx.engine.run",
    "MatrixResult": "advx.engine.run",
    "Executor": "advx.engine.executors",
    "InProcessExecutor": "advx.engine.executors",
    "MultiDeviceExecutor": "advx.engine.executors",
    "ResultStore": "advx.store.results",
    "CellRow": "advx.analysis.rows",
    "Registry": "advx.contract.registry",
    "PluginEntry": "advx.contract.registry",
    "LoadFailure": "advx.contract.registry",
    "PluginConflictError": "advx.contract.errors",
    "PluginLoadError": "advx.contract.errors",
    "PluginNotFoundError": "advx.contract.errors",
    "write_report": "advx.report",
}

__all__, __getattr__, __dir__ = tier(__name__, EXPORTS)
