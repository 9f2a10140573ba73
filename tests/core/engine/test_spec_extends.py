"""``extends = "other.toml"`` in a spec: the extended spec is loaded first and the extending
file's tables are merged over it. Each rule of the merge and each refusal is pinned here."""

from __future__ import annotations

import pytest

import advx
from advx.engine.spec import MatrixSpec

FULL = """
[matrix]
name = "full"
samples = 1000
batch_size = 250
seed = 3

[[datasets]]
name = "digits"

[[models]]
name = "mnist-cnn"
train = { epochs = 10, lr = 0.001 }

[[attacks]]
name = "fgsm"
eps = [0.1, 0.3]

[[attacks]]
name = "bim"
eps = 0.2
alpha = 0.025
steps = 8
"""


def write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


@pytest.fixture
def full(tmp_path):
    return write(tmp_path, "study/full.toml", FULL)


def test_a_table_merges_key_by_key(full):
    quick = write(full.parent, "quick.toml", 'extends = "full.toml"\n[matrix]\nname = "quick"\nsamples = 10\n')
    m = MatrixSpec.from_toml(quick).matrix
    assert (m.name, m.samples, m.batch_size, m.seed) == ("quick", 10, 250, 3)  # batch_size and seed inherited


def test_an_array_of_tables_is_replaced_whole_and_other_axes_are_inherited(full):
    quick = write(full.parent, "quick.toml", 'extends = "full.toml"\n[matrix]\nname = "quick"\n[[attacks]]\nname = "deepfool"\n')
    spec = MatrixSpec.from_toml(quick)
    assert [a.name for a in spec.attacks] == ["deepfool"]  # both inherited attacks are gone
    assert spec.models[0].train == {"epochs": 10, "lr": 0.001} and spec.datasets[0].name == "digits"


def test_a_scalar_or_a_list_replaces(full):
    text = 'extends = "full.toml"\n[matrix]\nname = "q"\n[attacks.0]\neps = 0.05\n[attacks.1]\neps = [0.1, 0.2]\n'
    spec = MatrixSpec.from_toml(write(full.parent, "q.toml", text))
    assert spec.attacks[0].params() == {"eps": 0.05}  # a scalar over a list
    assert spec.attacks[1].params() == {"eps": [0.1, 0.2], "alpha": 0.025, "steps": 8}  # a list over a scalar


def test_an_index_table_patches_one_inherited_table_recursively(full, registry):
    text = 'extends = "full.toml"\n[matrix]\nname = "q"\n[models.0.train]\nepochs = 1\n[attacks.1]\nalpha = 0.015\n'
    spec = MatrixSpec.from_toml(write(full.parent, "q.toml", text))
    assert spec.models[0].train == {"epochs": 1, "lr": 0.001}  # lr kept: the inline table merged
    assert spec.attacks[1].params() == {"eps": 0.2, "alpha": 0.015, "steps": 8}
    assert spec.attacks[0].params() == {"eps": [0.1, 0.3]}
    assert [c.attack.describe() for c in advx.plan(spec, registry)][-1] == "bim(eps=0.2, alpha=0.015, steps=8)"


def test_an_index_outside_the_inherited_array_is_one_line_naming_it(full):
    path = write(full.parent, "q.toml", 'extends = "full.toml"\n[matrix]\nname = "q"\n[attacks.2]\neps = 0.1\n')
    with pytest.raises(advx.ConfigError) as e:
        MatrixSpec.from_toml(path)
    assert "q.toml: attacks.2: over an inherited array of 2 table(s)" in one_line(e) and "[[attacks]] replaces" in str(e.value)
    path.write_text('extends = "full.toml"\nattacks = { 0 = 3 }\n[matrix]\nname = "q"\n')
    with pytest.raises(advx.ConfigError) as e:
        MatrixSpec.from_toml(path)
    assert "q.toml: attacks.0: must be a table of the fields to change, got 3" in one_line(e)


def test_a_chain_applies_each_file_over_the_one_it_extends(full):
    write(full.parent, "reduced.toml", 'extends = "full.toml"\n[matrix]\nname = "reduced"\nsamples = 100\n[models.0.train]\nepochs = 2\n')
    sub = write(full.parent, "variants/quick.toml", 'extends = "../reduced.toml"\n[matrix]\nname = "quick"\nbatch_size = 50\n')
    spec = MatrixSpec.from_toml(sub)  # relative to the extending file's folder, not the current one
    assert (spec.matrix.name, spec.matrix.samples, spec.matrix.batch_size, spec.matrix.seed) == ("quick", 100, 50, 3)
    assert spec.models[0].train == {"epochs": 2, "lr": 0.001}


def test_a_cycle_is_refused_in_one_line_naming_the_files(tmp_path):
    a = write(tmp_path, "a.toml", 'extends = "b.toml"\n[matrix]\nname = "a"\n')
    write(tmp_path, "b.toml", 'extends = "a.toml"\n[matrix]\nname = "b"\n')
    with pytest.raises(advx.ConfigError) as e:
        MatrixSpec.from_toml(a)
    assert f"cycle: {a} -> {tmp_path / 'b.toml'} -> {a}" in one_line(e)
    itself = write(tmp_path, "self.toml", 'extends = "self.toml"\n[matrix]\nname = "s"\n')
    with pytest.raises(advx.ConfigError, match="cycle"):
        MatrixSpec.from_toml(itself)


def test_a_missing_extended_file_is_one_line_naming_it(full):
    path = write(full.parent, "q.toml", 'extends = "nope.toml"\n[matrix]\nname = "q"\n')
    with pytest.raises(advx.ConfigError) as e:
        MatrixSpec.from_toml(path)
    assert one_line(e) == f"{path}: extends: spec file {str(full.parent / 'nope.toml')!r} does not exist"


def test_the_extending_spec_must_name_itself(full):
    path = write(full.parent, "q.toml", 'extends = "full.toml"\n[matrix]\nsamples = 10\n')
    with pytest.raises(advx.ConfigError) as e:
        MatrixSpec.from_toml(path)
    assert "q.toml: [matrix] name: a spec that extends another must give its own name" in one_line(e)
    with pytest.raises(advx.ConfigError, match=r"\[matrix\] name"):  # no [matrix] table at all
        MatrixSpec.from_toml(write(full.parent, "r.toml", 'extends = "full.toml"\n[[attacks]]\nname = "fgsm"\n'))
    same = write(full.parent, "s.toml", 'extends = "full.toml"\n[matrix]\nname = "full"\ndevice = "cuda"\n')
    assert MatrixSpec.from_toml(same).matrix.name == "full"  # an explicit name may be the base's own


def test_extends_must_be_a_file_name(full):
    path = write(full.parent, "q.toml", 'extends = 3\n[matrix]\nname = "q"\n')
    with pytest.raises(advx.ConfigError) as e:
        MatrixSpec.from_toml(path)
    assert "q.toml: extends: must be the name of a spec file (a string), got 3" in one_line(e)


def test_the_merged_spec_is_validated_like_any_other(full):
    path = write(full.parent, "q.toml", 'extends = "full.toml"\n[matrix]\nname = "q"\nsampels = 10\n')
    with pytest.raises(advx.ConfigError) as e:
        MatrixSpec.from_toml(path)
    assert "matrix.sampels: unknown field" in one_line(e)


def test_a_spec_given_as_text_extends_relative_to_the_current_folder(full, monkeypatch):
    monkeypatch.chdir(full.parent.parent)
    spec = MatrixSpec.from_toml_string('extends = "study/full.toml"\n[matrix]\nname = "t"\n', "text")
    assert (spec.matrix.name, spec.matrix.samples) == ("t", 1000)


def test_advx_run_reads_an_extending_spec(full, tmp_path, capsys):
    from advx.cli import main

    quick = write(full.parent, "quick.toml", 'extends = "full.toml"\n[matrix]\nname = "quick"\nsamples = 20\n[models.0.train]\nepochs = 1\n')
    assert main(["run", str(quick), "--dry-run", "--db", str(tmp_path / "r.db")]) == 0
    out = capsys.readouterr().out
    assert "quick" in out and "fgsm" in out and "bim" in out
