"""advx report (issue #13): the HTML and Markdown report, kept examples, the browser check, a 1,000-cell report.

Results files are built synthetically through ``ResultStore.record`` (rows scored by the
kernel's own ``summarize`` and breakdowns from made-up per-sample records), except one
tiny real matrix that checks the examples a run keeps.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
import torch

import advx
from advx.analysis.metrics import breakdown_by_class, breakdown_by_confidence, roc_points, summarize
from advx.plugins.defenses.rotation_study import load_rotation
from advx.report import INSTALL_HINT, build_report, export_examples, png_bytes, render_html, write_report
from advx.store.schema import EXAMPLE_KEYS

ROOT = Path(__file__).resolve().parents[3]
#: a reference to anything outside the page: src/href/url() to http(s) or protocol-relative, @import, <script>
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//|@import|<script|<link(?![^>]*href="data:)""", re.I)


def _records(n: int, acc: float, seed: int, detector: bool = False, classes: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % classes
    clean_pred = torch.where(torch.rand(n, generator=g) < 0.95, label, (label + 1) % classes)
    adv_pred = torch.where(torch.rand(n, generator=g) < acc, label, (label + 3) % classes)
    nan = torch.full((n,), float("nan"))
    s = {
        "idx": torch.arange(n),
        "label": label,
        "clean_pred": clean_pred,
        "clean_conf": torch.rand(n, generator=g) * 0.8 + 0.1,
        "adv_pred": adv_pred,
        "adv_conf": torch.rand(n, generator=g),
        "adv_top5": (adv_pred == label).long(),
        "target": torch.full((n,), -1),
        "linf": torch.full((n,), 0.1),
        "l2": torch.rand(n, generator=g),
        "clean_score": torch.randn(n, generator=g) if detector else nan,
        "adv_score": torch.randn(n, generator=g) + 1.5 if detector else nan,
        "clean_rejected": (torch.rand(n, generator=g) < 0.05).long() if detector else torch.full((n,), -1),
        "adv_rejected": (torch.rand(n, generator=g) < 0.7).long() if detector else torch.full((n,), -1),
    }
    return s


def record_cell(store, *, spec="synthetic", dataset="digits", model="mnist-cnn", defense="none", defense_config=None,
                threat="white-box", attack="fgsm", eps=0.1, acc=0.5, n=40, seed=0, detector=False, examples=0,
                status="done", error=None, reason=None, key=None, cache=None):  # fmt: skip
    """One cell row as execute_cell builds it, recorded through ResultStore.record.

    ``cache`` (a dict) reuses the records and breakdowns of an earlier call with the same
    ``n`` and ``detector`` (only the robust accuracy changes): fast enough for 1,000 cells.
    """
    cfg = {"name": attack, "eps": eps, "label_mode": "true"}
    desc = f"{attack}(eps={eps})" if eps is not None else attack
    row = {
        "cell_key": key or f"{dataset}-{model}-{defense}-{threat}-{desc}-{seed}",
        "spec_name": spec,
        "spec_hash": "h0",
        "status": status,
        "dataset": dataset,
        "model": model,
        "defense": defense,
        "threat": threat,
        "attack": desc,
        "dataset_config": {"name": dataset},
        "model_config": {"name": model},
        "defense_config": {"name": defense.split("(")[0], **(defense_config or {})},
        "threat_config": {"name": threat, "bpda": True},
        "attack_config": cfg,
        "attack_traits": {"norm": "linf", "iterative": attack != "fgsm", "single_step": "fgsm" if attack != "fgsm" else None, "requires": ["gradients"]},
        "advx_version": advx.__version__,
        "torch_version": torch.__version__,
        "device": "cpu",
        "seed": 0,
        "started": "2026-12-02T01:00:00+00:00",
        "finished": "2026-12-02T01:00:01+00:00",
        "seconds": 0.5,
        "train_seconds": 0.0,
        "trainings": [],
        "error": error,
        "reason": reason,
    }
    samples = None
    if status == "done":
        from advx.runtime.crafting import Cost

        hit = cache.get((n, detector)) if cache is not None else None
        if hit is None:
            samples = _records(n, acc, seed, detector)
            metrics = {"per_class": breakdown_by_class(samples, 10), "per_confidence": breakdown_by_confidence(samples)}
            if detector:
                metrics["roc"] = roc_points(samples["clean_score"], samples["adv_score"])
            hit = (samples, summarize(samples, Cost(0.25, n * 8, n * 8)), metrics)
            if cache is not None:
                cache[(n, detector)] = hit
        samples = dict(hit[0])
        row.update(hit[1])
        row["details"] = hit[2]
        if cache is not None:
            row["robust_accuracy"] = acc
        if examples:
            g = torch.Generator().manual_seed(seed)
            x = torch.rand(examples, 1, 8, 8, generator=g)
            samples[EXAMPLE_KEYS[0]] = x.half()
            samples[EXAMPLE_KEYS[1]] = (x + 0.1 * torch.randn(x.shape, generator=g).sign()).clamp(0, 1).half()
    store.record(advx.CellRow.from_flat(row), samples, [{"key": "t1", "kind": "model", "description": f"{model} on {dataset}", "seconds": 3.0, "cached": False}])
    return row


@pytest.fixture
def results(tmp_path) -> Path:
    """A small matrix with every kind of data the report draws."""
    db = tmp_path / "r.db"
    with advx.ResultStore(db) as s:
        for defense, base in (("none", 0.6), ("distillation(temperature=20)", 0.8)):
            for i, eps in enumerate((0.1, 0.2, 0.3)):
                acc = base - 0.2 * i
                if defense == "none" and eps == 0.3:
                    acc = 0.7  # more accurate at a larger eps: an eps-not-monotone flag
                record_cell(s, defense=defense, eps=eps, acc=acc, seed=i, examples=4 if eps == 0.1 else 0)
        for keep in (95, 99):
            record_cell(s, defense=f"i-defender(keep={keep})", defense_config={"keep": keep}, eps=0.2, acc=0.3, seed=7, detector=True)
        record_cell(s, attack="bim", eps=0.2, acc=0.05, seed=9, examples=3)
        record_cell(s, defense="ensemble", threat="member", status="not-applicable", reason="member: defense is not an ensemble")
        record_cell(s, attack="crasher", status="failed", error='attack "crasher" raised RuntimeError: kaboom')
    return db


def test_html_report_is_self_contained_and_has_every_section(results, tmp_path):
    pytest.importorskip("matplotlib")
    out = write_report(results, tmp_path / "report.html")
    text = out.read_text()
    assert not EXTERNAL.search(text), EXTERNAL.search(text)
    for section in ("matrix", "eps", "roc", "per-class", "per-confidence", "gallery", "cost", "provenance"):
        assert f'<section id="{section}">' in text, section
    # the heat map: coloured cells, robust accuracy, clean beside it, failed and n/a marked
    assert "background:hsl(" in text and ">0.6000<" in text and ">n/a<" in text and ">failed<" in text
    # plots are inline SVG with their text as text (fonttype none), no metadata
    assert text.count("<svg") >= 6 and "<metadata>" not in text and "<!DOCTYPE svg" not in text
    # the eps-not-monotone flag is listed under the eps plots (and ringed on the plot)
    assert "eps-not-monotone" in text and "fgsm(eps=0.3)" in text and "stroke: #ff0000" in text
    # ROC: the operating points of ID-95 and ID-99 are named on the plot and in the table
    assert ">ID-95<" in text and ">ID-99<" in text and "TPR @ FPR 1%" in text
    # gallery: data-URI PNGs with labels and confidences
    assert text.count("data:image/png;base64,") >= 3 * (4 + 3) and "adversarial: " in text and "perturbation x" in text
    # cost and provenance: passes per example, training apart, versions, failures with their reasons
    assert "forwards / example" in text and "Training and fitting: 1 trained" in text
    assert advx.__version__ in text and torch.__version__ in text
    assert "kaboom" in text and "member: defense is not an ensemble" in text
    # the worst case over the attacks of one constraint (fgsm and bim at linf eps=0.2)
    assert "Per-example worst case" in text and "linf eps=0.2" in text


def test_report_without_matplotlib_has_tables_and_says_how_to_get_plots(results, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    from advx.report import have_matplotlib

    assert not have_matplotlib()
    text = write_report(results, tmp_path / "r.html").read_text()
    assert html.escape(INSTALL_HINT) in text and "<svg" not in text and not EXTERNAL.search(text)
    assert "background:hsl(" in text and "ID-95" in text and "data:image/png" in text  # heat map, ROC table, gallery


def test_markdown_report_writes_its_images_beside_it(results, tmp_path):
    pytest.importorskip("matplotlib")
    out = write_report(results, tmp_path / "report.md")
    text = out.read_text()
    links = re.findall(r"\]\((report-images/[^)]+\.png)\)", text)
    assert len(links) >= 10
    for link in links:
        assert (tmp_path / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| dataset / model / defense | clean |" in text and "| digits / mnist-cnn / none |" in text


def test_markdown_tables_from_data_are_the_stored_numbers(results, tmp_path):
    """Item 5: the reproduction tables are generated from the results file, so doc and data cannot drift."""
    out = write_report(results, tmp_path / "t.md", spec_name="synthetic", tables_only=True)
    text = out.read_text()
    assert not (tmp_path / "t-images").exists() and "![" not in text
    with advx.ResultStore(results, readonly=True) as s:
        rows = [r for r in s.cells("synthetic") if r["status"] == "done" and r["threat"] == "white-box"]
    line = next(ln for ln in text.splitlines() if ln.startswith("| digits / mnist-cnn / distillation(temperature=20) |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    header = next(ln for ln in text.splitlines() if ln.startswith("| dataset / model / defense | clean |"))
    heads = [c.strip() for c in header.strip("|").split("|")]
    for r in rows:
        if r["defense"] == "distillation(temperature=20)":
            # the stored number with its 95% interval beside it (tests/core/cli/test_results_ci.py pins the interval)
            assert cells[heads.index(f"white-box / {r['attack']}")].startswith(f"{r['robust_accuracy']:.4f} [")
    # the eps sweep as a table in the shape of docs/reproductions.md: rows eps (clean first), one column per place
    lines = text.splitlines()
    at = lines.index("**fgsm: robust accuracy (dataset digits, model mnist-cnn, threat white-box)**")
    head = [c.strip() for c in lines[at + 2].strip("|").split("|")]
    assert head[:3] == ["eps", "none", "distillation(temperature=20)"]
    table = {ln.strip("|").split("|")[0].strip(): [c.strip() for c in ln.strip("|").split("|")[1:]] for ln in lines[at + 4 : at + 8]}
    assert list(table) == ["clean", "0.1", "0.2", "0.3"]
    for r in rows:
        if r["attack"].startswith("fgsm") and r["defense"] in head:
            eps = r["attack_config"]["eps"]
            got = table[f"{eps:g}"][head.index(r["defense"]) - 1]
            # the stored number, then its 95% bootstrap interval, which holds it
            assert got.startswith(f"{r['robust_accuracy']:.4f} [")
            lo, hi = (float(v) for v in got.split("[")[1].rstrip("]").split(","))
            assert lo <= r["robust_accuracy"] <= hi
    # the worst case over attacks carries its interval too, from the same examples
    worst = next(ln for ln in lines if "linf eps=0.2" in ln and ln.startswith("|"))
    assert worst.count("[") == 2  # the best single attack's and the worst case's


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``advx ARGV`` in this process (torch is imported already): exit code, stdout, stderr (whitespace joined)."""
    from advx.cli import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, " ".join(out.out.split()), " ".join(out.err.split())


def test_cli_report_and_examples(results, tmp_path, capsys):
    code, out, err = cli(capsys, "report", str(results), "-o", str(tmp_path / "x.md"))
    assert code == 0 and f"report: {tmp_path / 'x.md'}" in out, err
    code, out, err = cli(capsys, "report", str(results), "-o", str(tmp_path / "x.pdf"))
    assert code == 1 and "cannot tell the format" in err
    code, out, err = cli(capsys, "report", str(tmp_path / "nope.db"))
    assert code == 1 and "does not exist" in err
    code, out, err = cli(capsys, "results", str(results), "--examples", str(tmp_path / "ex"))
    assert code == 0 and "11 examples of 3 cells" in out, err
    index = (tmp_path / "ex" / "examples.csv").read_text().splitlines()
    assert len(index) == 12 and index[0].startswith("cell_key,dataset,model,defense,threat,attack,idx,label")
    first = index[1].split(",")
    for name in first[-4:-1]:
        assert (tmp_path / "ex" / name).read_bytes()[:4] == b"\x89PNG"


def test_run_keeps_examples_and_writes_the_report(tmp_path, capsys):
    spec = tmp_path / "tiny.toml"
    spec.write_text(
        """
[matrix]
name = "tiny"
samples = 24
batch_size = 24
keep_examples = 3

[[datasets]]
name = "synthetic"
train_size = 200
test_size = 40

[[models]]
name = "mlp"
hidden = [16]
train = { epochs = 1 }

[[defenses]]
name = "none"

[[attacks]]
name = "fgsm"
eps = [0.1, 0.2]
"""
    )
    db = tmp_path / "tiny.db"
    code, out, err = cli(capsys, "run", str(spec), "--db", str(db), "--cache-dir", str(tmp_path / "c"), "--report")
    assert code == 0 and f"report: {tmp_path / 'tiny.html'}" in out, err
    page = (tmp_path / "tiny.html").read_text()
    assert '<section id="gallery">' in page and not EXTERNAL.search(page)
    assert f"file {spec}" in page  # the spec file is recorded (its git commit: none, outside a work tree)
    with advx.ResultStore(db, readonly=True) as s:
        rows = s.cells("tiny")
        ex = s.examples(rows[0]["cell_key"])
        assert ex["x"].shape == (3, 1, 8, 8) and ex["x_adv"].shape == (3, 1, 8, 8)
        assert float((ex["x_adv"] - ex["x"]).abs().max()) <= 0.1 + 1e-2  # float16 storage, within the budget
        assert ex["label"].tolist() == s.samples(rows[0]["cell_key"])["label"][:3].tolist()
    # keep_examples is not part of the cell key: a rerun with another K skips every cell
    text = spec.read_text().replace("keep_examples = 3", "keep_examples = 0")
    spec.write_text(text)
    res = advx.run_matrix(spec, store=db)
    assert res.skipped == 2 and res.done == 0


def test_png_writer_roundtrip():
    import numpy as np

    grey = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4)
    rgb = np.stack([grey, grey // 2, 255 - grey], axis=2)
    for a, channels in ((grey, 1), (rgb, 3)):
        data = png_bytes(a)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        pos, idat, head = 8, b"", None
        while pos < len(data):
            (length,) = struct.unpack(">I", data[pos : pos + 4])
            kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
            assert zlib.crc32(kind + body) == struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0]
            head = body if kind == b"IHDR" else head
            idat += body if kind == b"IDAT" else b""
            pos += 12 + length
        w, h = struct.unpack(">II", head[:8])
        raw = zlib.decompress(idat)
        rows = [raw[i * (1 + w * channels) + 1 : (i + 1) * (1 + w * channels)] for i in range(h)]
        assert (w, h) == (4, 3) and b"".join(rows) == a.tobytes()


def test_rotation_curves_from_a_study_json(results, tmp_path):
    pytest.importorskip("matplotlib")
    study = {
        "setup": {"angles": [0, 90]},
        "pairs": {
            "1->8": {
                "n": 10,
                "mean_curve_adv_p_true": [i / 90 for i in range(91)],
                "mean_curve_adv_p_target": [1 - i / 90 for i in range(91)],
                "accuracy_by_angle_adv": [0.5] * 91,
                "ORACLE_best_angle_median": 32.0,
            }
        },
    }
    (tmp_path / "study-rotation.json").write_text(json.dumps(study))  # beside the results file: read anyway
    [s] = load_rotation(tmp_path / "study-rotation.json")
    assert s["angles"][0] == 0 and s["angles"][-1] == 90 and s["oracle_angle"] == 32.0
    text = write_report(results, tmp_path / "r.html").read_text()
    assert '<section id="rotation">' in text and "ORACLE median best angle 32" in text
    real = ROOT / "experiments" / "results" / "seed003-rotation.json"
    if real.exists():
        studies = load_rotation(real)
        assert studies and all(len(s["angles"]) == len(next(iter(s["curves"].values()))) for s in studies)


def test_a_1000_cell_report_renders_in_under_10s_and_5mb(tmp_path):
    pytest.importorskip("matplotlib")  # the plots are what it measures ("more eps sweeps are not drawn")
    db = tmp_path / "big.db"
    cache: dict = {}
    with advx.ResultStore(db) as s:
        s.conn.execute("PRAGMA synchronous = OFF")  # building the file is not what is measured
        i = 0
        for d in range(5):
            for df in range(10):
                for t in ("white-box", "transfer"):
                    for a in ("fgsm", "bim"):
                        for eps in (0.05, 0.1, 0.15, 0.2, 0.3):
                            record_cell(s, dataset=f"ds{d}", defense=f"def{df}", threat=t, attack=a, eps=eps, acc=0.8 - eps * 2, n=20,
                                        seed=i, detector=(df == 0), examples=4 if (d == 0 and t == "white-box") else 0, cache=cache)  # fmt: skip
                            i += 1
    assert i == 1000
    t0, c0 = time.perf_counter(), time.process_time()
    out = write_report(db, tmp_path / "big.html")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    size = out.stat().st_size
    print(f"1000-cell report: {seconds:.2f} s wall, {cpu:.2f} s CPU, {size / 1e6:.2f} MB")
    # the budget is 10 s; CPU time is what the report costs, wall time on a shared 2-core machine
    # also counts the other processes (a looser bound still catches a report that hangs)
    assert cpu < 10 and seconds < 30 and size < 5e6
    text = out.read_text()
    assert text.count("<td class=\"r\" style=\"background:hsl(") >= 1000 and "more eps sweeps are not drawn" in text


# -- the real browser ------------------------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class CDP:
    """The Chrome DevTools protocol over a pipe (--remote-debugging-pipe: fd 3 in, fd 4 out), standard library only."""

    def __init__(self, exe: str, profile: Path) -> None:
        self.to_r, self.to_w = os.pipe()
        self.from_r, self.from_w = os.pipe()
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--mute-audio", "about:blank"]  # fmt: skip

        def fds():
            os.dup2(self.to_r, 3)
            os.dup2(self.from_w, 4)

        self.proc = subprocess.Popen(args, pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(self.to_r)
        os.close(self.from_w)
        self.buf = b""
        self.events: list[dict] = []
        self.next_id = 0

    def _read(self, timeout: float) -> dict:
        import select

        while b"\0" not in self.buf:
            ready, _, _ = select.select([self.from_r], [], [], timeout)
            if not ready:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self.from_r, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed the pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self.to_w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read(timeout)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait(self, method: str, timeout: float = 30) -> dict:
        for i, m in enumerate(self.events):
            if m.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self._read(deadline - time.monotonic())
            if m.get("method") == method:
                return m
            self.events.append(m)
        raise TimeoutError(method)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 - it may already be gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self.to_w)
        os.close(self.from_r)


def render_in_chromium(pages: list[tuple[Path, Path, int | None]], width: int = 1200) -> list[dict]:
    """Open each (page, screenshot, height) in one headless Chromium, each in its own tab.

    Returns per page its console errors, network requests (anything but data: URLs and the
    page itself), page height and number of sections; saves a screenshot (the full page
    when height is None).
    """
    import base64

    exe = _chromium()
    assert exe is not None
    cdp = CDP(exe, pages[0][1].parent / ".chromium-profile")
    results = []
    try:
        for page, screenshot, height in pages:
            target = cdp.send("Target.createTarget", url="about:blank")["targetId"]
            session = cdp.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                cdp.send(f"{domain}.enable", session)
            cdp.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height or 900, deviceScaleFactor=1, mobile=False)
            cdp.events.clear()
            cdp.send("Page.navigate", session, url=page.resolve().as_uri())
            cdp.wait("Page.loadEventFired", timeout=60)
            time.sleep(0.3)  # late console messages
            value = lambda js: cdp.send("Runtime.evaluate", session, expression=js, returnByValue=True)["result"]["value"]  # noqa: E731
            full, sections = int(value("document.documentElement.scrollHeight")), value("document.querySelectorAll('section').length")
            cdp.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height or full, deviceScaleFactor=1, mobile=False)
            shot = cdp.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=True, timeout=60)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            mine = [m for m in cdp.events if m.get("sessionId") == session]
            errors = [
                m["params"]
                for m in mine
                if m.get("method") == "Runtime.exceptionThrown"
                or (m.get("method") == "Runtime.consoleAPICalled" and m["params"].get("type") in ("error", "assert"))
                or (m.get("method") == "Log.entryAdded" and m["params"]["entry"].get("level") == "error")
            ]
            own = page.resolve().as_uri()
            requests = [
                m["params"]["request"]["url"]
                for m in mine
                if m.get("method") == "Network.requestWillBeSent"
                and not m["params"]["request"]["url"].startswith("data:")
                and m["params"]["request"]["url"] != own
            ]
            # the legend entries of the per-class chart as the browser draws them: text and height in pixels
            legend = value(
                "[...document.querySelectorAll('#per-class svg g[id^=\"legend\"] text')]"
                ".map(t => [t.textContent, t.getBoundingClientRect().height])"
            )
            results.append({"errors": errors, "requests": requests, "height": full, "sections": sections, "legend": legend})
            cdp.send("Target.closeTarget", targetId=target)
        return results
    finally:
        cdp.close()


#: eight attacks on one place: more than the six the breakdown charts used to keep
MANY_ATTACKS = ("fgsm", "bim", "pgd", "apgd-ce", "square", "deepfool", "cw-l2", "fab")


def record_many_attacks(db: Path) -> list[str]:
    """Eight attacks on the place ``digits / mnist-cnn / i-defender(keep=95) / white-box`` (a
    detector, so its defense is also in the ROC plot); returns their labels."""
    with advx.ResultStore(db) as s:
        rows = [record_cell(s, attack=a, defense="i-defender(keep=95)", defense_config={"keep": 95}, eps=0.2, acc=0.05 * i, seed=40 + i, detector=True) for i, a in enumerate(MANY_ATTACKS)]
    return [r["attack"] for r in rows]


def _section(page: str, sid: str) -> str:
    start = page.index(f'<section id="{sid}"')
    end = page.find("<section id=", start + 1)
    return page[start : end if end > 0 else len(page)]


def legend_entries(section: str) -> list[tuple[str, str | None, float]]:
    """(label, colour, font size in points) of every legend entry of a section's plots, read from
    matplotlib's SVG: each label's colour is the fill or stroke of the handle drawn before it."""
    out = []
    for legend in re.findall(r'<g id="legend_\d+">(.*?)\n   </g>', section, re.S):
        colour = None
        for m in re.finditer(r'(?:fill|stroke): (#[0-9a-f]{6})|<text style="font-size: ([\d.]+)px[^>]*>([^<]*)</text>', legend):
            if m.group(1):
                if m.group(1) not in ("#ffffff", "#cccccc"):  # the legend's frame, not a handle
                    colour = colour or m.group(1)
            else:
                out.append((html.unescape(m.group(3)), colour, float(m.group(2))))
                colour = None
    return out


def test_breakdown_charts_show_every_attack_and_one_colour_each(results, tmp_path):
    """Every attack of a place is in its per-class and per-confidence charts (none dropped after
    six), each attack has one colour in both, each defense one colour in the eps and ROC plots,
    and legends are at least 9 points."""
    pytest.importorskip("matplotlib")
    labels = record_many_attacks(results)
    page = write_report(results, tmp_path / "report.html").read_text()
    colour_of: dict[str, str] = {}
    for sid in ("per-class", "per-confidence"):
        entries = legend_entries(_section(page, sid))
        shown = {label: colour for label, colour, _ in entries}
        assert set(labels) <= set(shown), (sid, set(labels) - set(shown))
        for label in labels:
            assert colour_of.setdefault(label, shown[label]) == shown[label], (sid, label)
        assert all(size >= 9 for _, _, size in entries)
    assert len({colour_of[label] for label in labels}) == len(labels)  # eight attacks, eight colours
    eps = {label: colour for label, colour, _ in legend_entries(_section(page, "eps")) if colour}
    roc = {label.split(" (AUC")[0]: colour for label, colour, _ in legend_entries(_section(page, "roc"))}
    shared = set(eps) & set(roc)
    assert "i-defender(keep=95)" in shared and all(eps[d] == roc[d] for d in shared)


@pytest.mark.skipif(_chromium() is None, reason="no chromium installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium_offline(results, tmp_path):
    pytest.importorskip("matplotlib")
    labels = record_many_attacks(results)  # a matrix with more than six attacks on one place
    page = write_report(results, tmp_path / "report.html")
    # a page that does make a request and logs an error: the harness must see both
    probe = tmp_path / "probe.html"
    probe.write_text('<!doctype html><html><body><img src="http://127.0.0.1:9/x.png"><script>console.error("boom")</script></body></html>')
    seen, got = render_in_chromium([(probe, tmp_path / "probe.png", 300), (page, tmp_path / "report.png", None)])
    assert any("127.0.0.1:9" in u for u in seen["requests"]) and seen["errors"]
    assert got["errors"] == [] and got["requests"] == []
    assert got["sections"] >= 8 and got["height"] > 1500
    drawn = dict(got["legend"])
    assert set(labels) <= set(drawn), set(labels) - set(drawn)  # all eight attacks, as drawn
    assert min(drawn[label] for label in labels) >= 10  # legend text at least 10 px high on a 1200 px page
    shot = (tmp_path / "report.png").read_bytes()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000
