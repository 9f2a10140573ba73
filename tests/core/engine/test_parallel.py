"""Several devices: cells run in worker processes, results committed by the parent."""

from __future__ import annotations

import pytest
import torch

import advx
from advx.engine.devices import resolve_devices
from advx.engine.executors import Dispatch, worker_threads


def spec(cache, device):
    return {
        "matrix": {"name": "par", "samples": 100, "batch_size": 50, "device": device, "cache_dir": cache},
        "datasets": [{"name": "digits"}],
        "models": [{"name": "mlp", "train": {"epochs": 3}}, {"name": "mnist-cnn", "train": {"epochs": 3}}],
        "attacks": [{"name": "fgsm", "eps": [0.1, 0.2]}, {"name": "bim", "eps": 0.1, "steps": 3}],
    }


def test_two_cpu_workers_give_the_same_results_as_one_process(tmp_path):
    cache = str(tmp_path / "cache")
    serial = advx.run_matrix(spec(cache, "cpu"), store=tmp_path / "a.db")
    parallel = advx.run_matrix(spec(cache, "cpu,cpu"), store=tmp_path / "b.db")
    assert serial.done == parallel.done == 6
    a = {r["cell_key"]: r for r in serial.rows}
    b = {r["cell_key"]: r for r in parallel.rows}
    assert a.keys() == b.keys()
    for k in a:
        assert a[k]["robust_accuracy"] == pytest.approx(b[k]["robust_accuracy"])
        assert a[k]["mean_l2"] == pytest.approx(b[k]["mean_l2"], rel=1e-5)
    with advx.ResultStore(tmp_path / "b.db") as store:
        assert len(store.cells(status="done")) == 6


def test_dispatch_keeps_model_groups_together_then_helps(registry):
    cells = advx.plan(advx.MatrixSpec.from_dict(spec(None, "cpu")), registry)
    todo = Dispatch(cells)
    a = todo.next(None)  # two fresh workers take one group each
    b = todo.next(None, {a.model_group()})
    assert a.model.name != b.model.name
    # each worker stays on its group while it has cells
    assert [todo.next(a.model_group(), {b.model_group()}).model.name for _ in range(2)] == [a.model.name] * 2
    # its group done, a worker helps with the other's (the model comes from the cache, trained once)
    assert todo.next(a.model_group(), {b.model_group()}).model.name == b.model.name
    assert todo.next(b.model_group(), {b.model_group()}).model.name == b.model.name
    assert todo.next(b.model_group()) is None and todo.empty()


def test_dispatch_claims_each_cell_as_it_is_handed_out(registry):
    cells = advx.plan(advx.MatrixSpec.from_dict(spec(None, "cpu")), registry)[:3]
    verdicts = {cells[0].key: ["done"], cells[1].key: ["wait", "wait", "run"], cells[2].key: ["run"]}
    asked = []

    def claim(cell):
        asked.append(cell.key)
        return verdicts[cell.key].pop(0)

    todo = Dispatch(cells, claim, poll=0.0)
    assert todo.next() is cells[2]  # the first is done elsewhere, the second being computed elsewhere
    assert todo.next() is None and not todo.empty()  # still computed elsewhere: nothing to hand out now
    assert todo.next() is cells[1] and todo.empty()  # its claim expired: ours now
    assert asked == [cells[0].key, cells[1].key, cells[2].key, cells[1].key, cells[1].key]


def test_device_lists_are_validated():
    assert [str(d) for d in resolve_devices("cpu,cpu")] == ["cpu", "cpu"]
    with pytest.raises(advx.ConfigError, match="matrix.device"):
        advx.MatrixSpec.from_dict({**spec(None, "cpu,tpu")})
    if not torch.cuda.is_available():
        with pytest.raises(advx.ConfigError, match="CUDA is not available"):
            resolve_devices("cuda:all")


@pytest.mark.gpu
def test_all_gpus(tmp_path):
    res = advx.run_matrix(spec(str(tmp_path / "cache"), "cuda:all"), store=tmp_path / "g.db")
    assert res.done == 6 and res.failed == 0


def test_cpu_workers_split_the_cores_unless_threads_per_worker_is_given(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    full, empty = [object()], []
    assert worker_threads(["cpu", "cpu"], [full, full]) == [4, 4]
    assert worker_threads(["cpu", "cpu", "cpu", "cpu"], [full, full, empty, empty]) == [4, 4, 4, 4]  # idle workers do not count
    assert worker_threads(["cpu"], [full]) == [8]
    assert worker_threads(["cpu", "cpu"], [full, full], cpu_threads=1) == [1, 1]  # what a scaling benchmark pins
    assert worker_threads(["cuda:0", "cpu"], [full, full])[1] == 8
