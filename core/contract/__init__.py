"""Layer 0, the plugin contract: what a plugin implements and what the kernel promises it.

``interfaces`` (Attack, Defense, Model, Dataset and their configs), ``threats`` (the
threat model base, its views, EOT), ``protocols`` (what a defense's module may declare:
Detector, Ensemble, InputTransform), ``hookspecs`` and ``registry`` (discovery through
entry points), ``labels`` (label modes) and ``errors``. Imports nothing above itself.
"""
