"""The result schema: every column of a cell row, a per-sample row and a training row, once.

The SQLite tables (``advx.results``), the ``advx results`` tables and exports and the rows
``run_matrix`` returns are all derived from these tuples. Metric columns come from the
metrics declared in ``advx.metrics`` (adding a metric is one decorated function there);
the other columns are listed here.

A cell row's ``status`` is ``done``, ``failed`` (``error`` says why) or
``not-applicable`` (``reason`` says why: e.g. a ``member`` threat on a defense that is not
an ensemble).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .metrics import METRICS

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Column:
    """One column of the cells table."""

    name: str
    sql: str = "TEXT"  # TEXT, REAL or INTEGER
    json: bool = False  # stored as JSON text, returned decoded by the Python API
    header: str | None = None  # heading in result tables (None: not shown by default)
    fmt: str = ""  # format of numbers in tables
    description: str = ""


@dataclass(frozen=True)
class SampleColumn:
    """One column of the per-sample table: a tensor of this dtype in the records."""

    name: str
    dtype: torch.dtype
    description: str = ""

    @property
    def sql(self) -> str:
        return "REAL" if self.dtype.is_floating_point else "INTEGER"


_IDENTITY = (
    Column("cell_key", description="hash of everything that defines the cell"),
    Column("spec_name", description="the spec (matrix name) the cell was last run under"),
    Column("spec_hash", description="hash of that spec"),
    Column("status", description="done, failed or not-applicable"),
    Column("dataset", header="dataset", description="dataset plugin and the config values set"),
    Column("model", header="model"),
    Column("defense", header="defense"),
    Column("threat", header="threat"),
    Column("attack", header="attack"),
)
_CONFIGS = (
    Column("dataset_config", json=True, description="validated dataset config, with its name"),
    Column("model_config", json=True),
    Column("train_config", json=True),
    Column("defense_config", json=True),
    Column("threat_config", json=True),
    Column("attack_config", json=True),
    Column("attack_traits", json=True, description="what the attack declares: norm, iterative, single_step, requires"),
)
_METRICS = tuple(Column(m.name, m.sql, header=m.header, fmt=m.fmt, description=m.description) for m in METRICS)
_COST_AND_PROVENANCE = (
    Column("seconds", "REAL", header=None, fmt=".2f", description="wall time of crafting and scoring (training excluded)"),
    Column("train_seconds", "REAL", fmt=".2f", description="training and fitting done while this cell ran (not in seconds)"),
    Column("crafted_by", description="cell key whose crafted examples this cell reused (its cost is counted there)"),
    Column("batch_size", "INTEGER", description="examples per attack batch used (smaller than the spec's after an out-of-memory back-off)"),
    Column("trainings", json=True, description="training keys this cell used, with seconds and whether cached"),
    Column("metrics", json=True, description="per-class and per-confidence breakdowns, ROC points, traceback of a failure"),
    Column("error", description="why the cell failed"),
    Column("reason", description="why the cell is not applicable"),
    Column("advx_version"),
    Column("torch_version"),
    Column("device"),
    Column("seed", "INTEGER"),
    Column("started"),
    Column("finished"),
)

#: every column of a cell row, in table order
CELL_COLUMNS: tuple[Column, ...] = _IDENTITY + _CONFIGS + _METRICS + _COST_AND_PROVENANCE
CELL_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in CELL_COLUMNS)
BY_NAME = {c.name: c for c in CELL_COLUMNS}
JSON_COLUMNS = tuple(c.name for c in CELL_COLUMNS if c.json)
#: the columns result tables show by default, in order
TABLE_COLUMNS: tuple[Column, ...] = tuple(c for c in CELL_COLUMNS if c.header)
PLACE_COLUMNS = ("dataset", "model", "defense", "threat", "attack")

SAMPLE_COLUMNS: tuple[SampleColumn, ...] = (
    SampleColumn("idx", torch.int64, "index of the example in the test split"),
    SampleColumn("label", torch.int64, "true class"),
    SampleColumn("clean_pred", torch.int64, "prediction on the clean example"),
    SampleColumn("clean_conf", torch.float32, "top-1 probability on the clean example"),
    SampleColumn("adv_pred", torch.int64, "prediction on the adversarial example"),
    SampleColumn("adv_conf", torch.float32, "top-1 probability on the adversarial example"),
    SampleColumn("adv_top5", torch.int64, "1 if the true class is in the adversarial top 5"),
    SampleColumn("target", torch.int64, "the attack's target class, -1 when untargeted"),
    SampleColumn("linf", torch.float32, "L-inf norm of the perturbation"),
    SampleColumn("l2", torch.float32, "L2 norm of the perturbation"),
    SampleColumn("clean_score", torch.float32, "detector score of the clean example (NaN: no detector)"),
    SampleColumn("adv_score", torch.float32, "detector score of the adversarial example"),
    SampleColumn("clean_rejected", torch.int64, "1 if the detector rejects the clean example, -1: no detector"),
    SampleColumn("adv_rejected", torch.int64, "1 if the detector rejects the adversarial example, -1: no detector"),
)
SAMPLE_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in SAMPLE_COLUMNS)

#: the examples table: the first ``[matrix] keep_examples`` clean and adversarial inputs of
#: each cell (for galleries: ``advx report``, ``advx results --examples``); joined with the
#: samples table on (cell_key, idx) for labels, predictions and confidences. Tensors are
#: stored as zlib-compressed float16 bytes of ``shape``.
EXAMPLE_COLUMNS: tuple[Column, ...] = (
    Column("idx", "INTEGER", description="index of the example in the test split"),
    Column("shape", description="shape of one example, as JSON"),
    Column("x", "BLOB", description="the clean input (zlib-compressed float16)"),
    Column("x_adv", "BLOB", description="the adversarial input (zlib-compressed float16)"),
)
#: keys under which ``execute_cell`` hands the kept examples to ``ResultStore.record`` in the
#: samples dict (tensors of shape (K, *input_shape); not per-sample columns)
EXAMPLE_KEYS = ("example_x", "example_x_adv")

#: the trainings table: one row per trained model or fitted artifact
TRAINING_COLUMNS: tuple[Column, ...] = (
    Column("key", description="training key (the checkpoint's name in the cache)"),
    Column("kind", description="model or artifact"),
    Column("description"),
    Column("seconds", "REAL", fmt=".2f"),
    Column("cached", "INTEGER", description="1 if it was loaded (from the cache, or a model file: Model.pretrained), not trained"),
    Column("recorded"),
)


def format_value(column: str, v: object) -> str:
    """A cell value as result tables show it (``-`` for missing)."""
    if v is None:
        return "-"
    if isinstance(v, float):
        col = BY_NAME.get(column)
        fmt = col.fmt if col is not None and col.fmt and col.fmt != "d" else ".4f"
        return format(v, fmt)
    return str(v)
