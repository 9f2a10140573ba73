"""The public API for embedders: evaluate your own ``nn.Module`` on your own data.

Other Python tools call ``evaluate`` (or ``run_attack``) with a model, data and attacks,
and get ``AttackReport`` objects back; the same steps as a matrix cell run inside. See
the README's "Embedding" section.
"""

from __future__ import annotations

from ._lazy import tier

#: public name -> the module that defines it (one list: the tier of embedders)
EXPORTS: dict[str, str] = {
    "evaluate": "advx.engine.embedding",
    "run_attack": "advx.engine.embedding",
    "AttackReport": "advx.engine.embedding",
    "check_model": "advx.runtime.guards",
    "check_budget": "advx.runtime.guards",
    "tune_cpu_allocator": "advx.runtime.allocator",
}

__all__, __getattr__, __dir__ = tier(__name__, EXPORTS)
