"""The public API for plugin authors: everything a plugin (built-in or third-party) imports.

A plugin module implements ``advx_register_*`` hooks (``hookimpl``) returning plugin
classes: attacks, defenses, models, datasets, threat models, metrics and sanity checks.
Built-in plugins import only these names, through ``from advx import ...``, exactly as a
third party does. See docs/plugins.md.
"""

from __future__ import annotations

from ._lazy import tier

#: public name -> the module that defines it (one list: the tier of plugin authors)
EXPORTS: dict[str, str] = {
    # the hooks
    "hookimpl": "advx.contract.hookspecs",
    "hookspec": "advx.contract.hookspecs",
    # the plugin classes and their configs
    "Plugin": "advx.contract.interfaces",
    "PluginConfig": "advx.contract.interfaces",
    "Attack": "advx.contract.interfaces",
    "AttackConfig": "advx.contract.interfaces",
    "Classifier": "advx.contract.interfaces",
    "Dataset": "advx.contract.interfaces",
    "DatasetConfig": "advx.contract.interfaces",
    "DatasetInfo": "advx.contract.interfaces",
    "Defense": "advx.contract.interfaces",
    "DefenseConfig": "advx.contract.interfaces",
    "Model": "advx.contract.interfaces",
    "ModelConfig": "advx.contract.interfaces",
    "Normalize": "advx.contract.interfaces",
    "NormalizedModel": "advx.contract.interfaces",
    "input_gradient": "advx.contract.interfaces",
    "select_output": "advx.contract.interfaces",
    "OutputSelect": "advx.contract.interfaces",
    "ExampleNoise": "advx.contract.noise",
    "ThreatModel": "advx.contract.threats",
    "ThreatConfig": "advx.contract.threats",
    "AttackView": "advx.contract.threats",
    "Need": "advx.contract.threats",
    "mean_of_loss_gradients": "advx.contract.threats",
    # what a defense declares about the module it returns
    "bpda": "advx.contract.protocols",
    "Detector": "advx.contract.protocols",
    "Ensemble": "advx.contract.protocols",
    "InputTransform": "advx.contract.protocols",
    # the errors a plugin raises
    "AdvxError": "advx.contract.errors",
    "BudgetViolationError": "advx.contract.errors",
    "ConfigError": "advx.contract.errors",
    "DataError": "advx.contract.errors",
    "ModelCheckError": "advx.contract.errors",
    # services: labels, data, training, the defense context, counting passes
    "resolve_labels": "advx.contract.labels",
    "as_tensor_dataset": "advx.runtime.data",
    "dataset_labels": "advx.runtime.data",
    "iter_batches": "advx.runtime.data",
    "load_split": "advx.runtime.data",
    "take": "advx.runtime.data",
    "accuracy": "advx.runtime.training",
    "applies_normalization": "advx.runtime.training",
    "background_value": "advx.runtime.training",
    "build_model": "advx.runtime.training",
    "train_model": "advx.runtime.training",
    "TrainConfig": "advx.runtime.training",
    "TrainResult": "advx.runtime.training",
    "TrainRequest": "advx.runtime.joint",
    "architecture_signature": "advx.runtime.joint",
    "DefenseContext": "advx.runtime.context",
    "TrainRecord": "advx.runtime.context",
    "PassCounter": "advx.runtime.crafting",
    # contributing a report section (``advx_report_sections``)
    "SectionContext": "advx.report.blocks",
    "ReportSection": "advx.report.blocks",
    "ReportPara": "advx.report.blocks",
    "ReportTable": "advx.report.blocks",
    "INSTALL_HINT": "advx.report.blocks",
    # declaring a metric or a sanity check
    "metric": "advx.analysis.metrics",
    "check": "advx.analysis.checks",
    "Flag": "advx.analysis.checks",
}

__all__, __getattr__, __dir__ = tier(__name__, EXPORTS)
