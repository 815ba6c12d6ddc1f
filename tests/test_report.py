"""The HTML report, the dashboard and the analysis notebook, on one tiny real sweep run once for the module:
batch size x lr grid, 2 seeds, lr 1e8 diverges (4 trials, 8 runs, about 6 s on 2 cores)."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pandas as pd
import pytest
import yaml

import analysis
import sweeps
from analysis import figures
from analysis.report import grouping, report
from cli import main
from conftest import ROOT, tiny_spec, wait_for
from search_spaces import load_spec

NAME = "report"


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    spec = tiny_spec(NAME, seeds=2, sampler={"name": "grid"}, space={
        "train.batch_size": {"grid": [32, 64]}, "optim.lr": {"grid": [0.05, 1.0e8]}})
    del spec["budget"]
    path = folder / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    runs = folder / "runs"
    sweeps.run(load_spec(path), sweeps.resolve(NAME, None, runs, create=True), quiet=True)
    return {"dir": runs, "spec": path, "frame": analysis.load(NAME, directory=runs)}


@pytest.fixture(scope="module")
def written(swept, tmp_path_factory):
    """The report written by the CLI, in a subprocess as a user runs it: (path, its HTML, its figure count)."""
    out = tmp_path_factory.mktemp("html") / "report.html"
    done = subprocess.run([sys.executable, "-m", "cli", "report", str(swept["spec"]), "--dir", str(swept["dir"]),
                           "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    page = out.read_text()
    return out, page, int(re.search(r'<body data-figures="(\d+)">', page).group(1))


def test_report_holds_spec_status_best_tables_failures_and_each_figure_once(swept, written):
    frame = swept["frame"]
    _, page, count = written
    assert (frame["state"] == "failed").sum() == 4
    kinds = figures.kinds_for(frame)
    assert count == len(kinds) == 7
    for kind in kinds:
        assert page.count(f'data-kind="{kind}"') == 1 and page.count(f'id="figure-{kind}"') == 1
    # plotly.js inline exactly once, nothing fetched from elsewhere
    assert page.count("plotly.js v") == 1
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|cdn\.plot\.ly/plotly", page)
    # spec (as stored), status line, failures with their reason
    assert yaml.safe_load(re.search(r'<section id="spec">\s*<h2>Spec</h2>\s*<pre>(.*?)</pre>', page, re.S)
                          .group(1).replace("&#x27;", "'").replace("&quot;", '"'))["space"]["optim.lr"] == {
                              "grid": [0.05, 1.0e8]}
    assert "4 trials (8 runs) on optuna: complete 2, pruned 0, failed 2" in page
    failures = re.findall(r"<li>(.*?)</li>", _section(page, "failures"))
    assert failures == [f"trial {t} seed {s}: diverged at epoch 1, step 3" for t in (1, 3) for s in (0, 1)]
    # best trials by the objective with their params; the summary grouped by the grid params
    best = _table(_section(page, "best"))
    per_trial = frame[frame["state"] == "complete"].groupby("trial")["val_error"].median().sort_values()
    assert list(best["trial"]) == list(per_trial.index)
    assert list(best["val_error (median)"]) == pytest.approx(per_trial.values, abs=1e-4)
    assert {"train.batch_size", "optim.lr", "test_error (median)"} <= set(best.columns)
    table = _table(_section(page, "summary"))
    expected = analysis.summary(frame, ["train.batch_size", "optim.lr"])
    assert list(table.columns) == list(expected.columns)
    assert list(table["test_error_median"]) == pytest.approx(list(expected["test_error_median"]), abs=1e-4)


def _section(page: str, id_: str) -> str:
    return re.search(rf'<section id="{id_}">(.*?)</section>', page, re.S).group(1)


def _table(fragment: str) -> pd.DataFrame:
    """The first HTML table in `fragment` (as DataFrame.to_html writes it), numbers parsed."""
    head = re.findall(r"<th>(.*?)</th>", fragment)
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", fragment, re.S)]
    frame = pd.DataFrame([r for r in rows if r], columns=head)
    for col in frame.columns:
        numbers = pd.to_numeric(frame[col], errors="coerce")
        frame[col] = numbers if numbers.notna().all() else frame[col]
    return frame


def test_report_escapes_text_and_groups_by_variant_first(swept):
    frame = swept["frame"].copy()
    frame.attrs = {**swept["frame"].attrs}
    assert grouping(frame) == ["train.batch_size", "optim.lr"]
    frame["variant"] = ["a", "b"] * (len(frame) // 2)
    assert grouping(frame) == ["variant"]
    frame.attrs["spec"] = {"space": {"optim.lr": {"loguniform": [0.01, 0.1]}}}
    assert grouping(frame.drop(columns="variant")) is None
    from analysis.report import failures_html
    bad = swept["frame"].copy()
    bad.loc[bad["state"] == "failed", "error"] = "<script>alert(1)</script>"
    assert "<script>" not in failures_html(bad) and "&lt;script&gt;alert(1)" in failures_html(bad)


def test_report_errors_are_one_line(swept, tmp_path, capsys):
    assert main(["report", "nope", "--dir", str(swept["dir"])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no sweep 'nope'" in err
    url = sweeps.resolve("empty", None, tmp_path, create=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="empty", storage=url)
    assert main(["report", "empty", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: sweep 'empty' has no trials yet; fix: run `sweep run SPEC` first"
    assert not list(tmp_path.glob("*.html"))
    assert report(NAME, directory=swept["dir"], top=1)[0].count('<td>0.05</td>') >= 1


# ---- the report in a real browser ------------------------------------------------------------

def _chromium():
    """A headless Chromium driven by selenium, or pytest.skip saying why there is none."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        pytest.skip(f"selenium is not installed ({e}); fix: pip install -e '.[test]'")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("chromium or chromedriver not found on PATH; fix: apt-get install chromium chromium-driver "
                    "(scripts/setup.sh does)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(options=options, service=Service(executable_path=driver))
    except WebDriverException as e:
        pytest.skip(f"headless chromium did not start: {str(e.msg or e).splitlines()[0]}")


def test_report_draws_every_figure_in_headless_chromium(written):
    from selenium.webdriver.support.ui import WebDriverWait
    path, _, count = written
    browser = _chromium()
    try:
        browser.get(path.as_uri())
        drawn = ("return Array.from(document.querySelectorAll('.js-plotly-plot'))"
                 ".filter(d => d.querySelector('svg.main-svg')).length")
        WebDriverWait(browser, 60).until(lambda b: b.execute_script(drawn) >= count)
        assert browser.execute_script("return document.querySelectorAll('.js-plotly-plot').length") == count
        assert browser.execute_script(drawn) == count
        assert browser.execute_script("return document.querySelectorAll('.figure').length") == count
        # offline: the page loaded nothing but itself
        assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
        severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert severe == []
    finally:
        browser.quit()


# ---- the dashboard ---------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except OSError:
        return None


def _listening_on(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) with a socket listening on `port`."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            for line in open(table).read().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, hexport = local.split(":")
                if state == "0A" and int(hexport, 16) == port:
                    out.add(addr)
    return out


def test_dashboard_serves_the_sweep_on_loopback_and_stops(swept):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cli", "dashboard", NAME, "--dir", str(swept["dir"]),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        home = wait_for(lambda: proc.poll() is None and _get(f"http://127.0.0.1:{port}/"), timeout=60)
        assert home and home[0] == 200, proc.poll()
        status, body = _get(f"http://127.0.0.1:{port}/api/studies")
        assert status == 200 and NAME in [s["study_name"] for s in json.loads(body)["study_summaries"]]
        if os.path.exists("/proc/net/tcp"):
            assert _listening_on(port) == {"0100007F"}  # 127.0.0.1 only
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert out.splitlines()[0] == f"dashboard for {NAME!r}: http://127.0.0.1:{port}/  (Ctrl-C stops it)"
    time.sleep(0.2)
    assert _get(f"http://127.0.0.1:{port}/") is None  # nothing left serving after the command ends


# ---- the notebook ----------------------------------------------------------------------------

def test_analysis_notebook_runs_top_to_bottom(swept, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = ROOT / "notebooks" / "analysis.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    assert "parameters" in nb.cells[1].metadata.get("tags", [])
    monkeypatch.setenv("SWEEP", NAME)
    monkeypatch.setenv("SWEEP_DIR", str(swept["dir"]))
    monkeypatch.setenv("PLOTLY_RENDERER", "json")  # small outputs; the figures are still built and shown
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = [o for o in outputs if "application/json" in o.get("data", {})
             or "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(shown) == 2
    text = "".join(o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "median" in text and "std" in text and "diverged at epoch 1" in text
