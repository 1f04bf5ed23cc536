"""The MLflow UI, as a person sees it, in headless Chromium against a real `mlflow server`.

Checks that a tracked run's ``finops/cost_usd`` shows in the experiment's runs
table (selected through the UI's own "Columns" picker, as a user would), with
the logged values, and that the cost charts open in the run's Artifacts tab.

Needs Debian's ``chromium`` + ``chromium-driver`` and Selenium (``.ci/install-browser``).
Where they are missing the test runs that script once; it is skipped, with the
reason, only where they still cannot be installed.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

import mlflow_finops
from mlflow_finops.cli import cli
from mlflow_finops.cost.timeline import log_cost_timeline
from mlflow_finops.names import ARTIFACT_TIMELINE_PNG as TIMELINE_PNG
from mlflow_finops.spend.report import REPORTS_EXPERIMENT

pytestmark = [pytest.mark.server, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=2000,1100",
]
COST_COL = "metrics.`finops/cost_usd`"


def _browser_missing() -> str | None:
    missing = [b for b in ("chromium", "chromedriver") if shutil.which(b) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (Python)")
    return ", ".join(missing) or None


@pytest.fixture(scope="module")
def browser_ready() -> None:
    missing = _browser_missing()
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        proc = subprocess.run(["bash", str(ROOT / ".ci" / "install-browser")], capture_output=True, text=True,
                              timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"no browser: .ci/install-browser failed: {proc.stderr.strip()[-300:]}")
        import importlib

        importlib.invalidate_caches()
        missing = _browser_missing()
    if missing:
        pytest.skip(f"no browser for the UI check: missing {missing} and cannot install it here "
                    "(run .ci/install-browser as root on Debian)")


@pytest.fixture
def driver(browser_ready: None, tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-', dir=tmp_path)}"]:
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    drv.set_page_load_timeout(60)
    try:
        yield drv
    finally:
        drv.quit()


def _wait(drv, what: str, fn, timeout: float = 45):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(drv, timeout, poll_frequency=0.25).until(lambda d: fn(d))
    except TimeoutException:
        shot = Path(tempfile.gettempdir()) / f"finops-ui-failure-{int(time.time())}.png"
        drv.save_screenshot(str(shot))
        raise AssertionError(f"timed out waiting for {what}; screenshot: {shot}") from None


def _shot(drv, tmp_path: Path, name: str) -> None:
    """Keep a screenshot; FINOPS_SCREENSHOT_DIR keeps it after the test (to look at it)."""
    folder = Path(os.environ.get("FINOPS_SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    drv.save_screenshot(str(folder / name))


def _png_width(data: bytes) -> int:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">I", data[16:20])[0]


def _click_text(drv, text: str, within: str = "") -> bool:
    """Click the visible element whose own text is ``text`` (one XPath query, not a walk of the DOM)."""
    from selenium.webdriver.common.by import By

    scope = f"//*[@role='{within}']" if within else ""
    for el in drv.find_elements(By.XPATH, f"{scope}//*[text()[normalize-space(.)='{text}']]"):
        try:
            if el.is_displayed():
                el.click()
                return True
        except Exception:  # stale or covered while the React app re-renders: try on the next poll
            continue
    return False


def _open_artifact(drv, base: str, exp_id: str, run_id: str, folder: str, name: str, width: int) -> None:
    """Run page -> Artifacts tab -> folder -> file, then wait for the image to be decoded at its real width."""
    from selenium.webdriver.common.by import By

    drv.get(f"{base}/#/experiments/{exp_id}/runs/{run_id}")
    _wait(drv, "the run page's Artifacts tab", lambda d: _click_text(d, "Artifacts"))
    _wait(drv, f"the {name} artifact", lambda d: _click_text(d, name) or (_click_text(d, folder) and False))

    def decoded(d):
        for img in d.find_elements(By.TAG_NAME, "img"):
            if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == width:
                return img
        return None

    _wait(drv, f"{folder}/{name} to show as an image {width}px wide", decoded)
    assert f"{folder}/{name}" in drv.find_element(By.TAG_NAME, "body").text


def burn(seconds: float) -> None:
    deadline = time.process_time() + seconds
    while time.process_time() < deadline:
        pass


def test_mlflow_ui_shows_cost_column_and_cost_charts(server_uri: str, driver, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    client = MlflowClient()
    name = f"ui-check-{uuid.uuid4().hex[:6]}"
    mlflow.set_experiment(name)
    mlflow_finops.autolog(interval_s=0.1)
    runs: dict[str, object] = {}
    for i in range(3):
        with mlflow.start_run(run_name=f"train-{i}") as run:
            tracker = mlflow_finops.active_tracker()
            burn(0.15 * (i + 1))
            mlflow.log_metric("accuracy", 0.7 + 0.05 * i)
        runs[run.info.run_id] = tracker
    mlflow_finops.autolog(disable=True)
    exp_id = client.get_experiment_by_name(name).experiment_id
    costs = {rid: client.get_run(rid).data.metrics["finops/cost_usd"] for rid in runs}
    assert all(c > 0 for c in costs.values())
    first = next(iter(runs))
    if TIMELINE_PNG not in {a.path for a in client.list_artifacts(first, "finops")}:
        # until the tracker logs its timeline at run end by itself, log the same chart from its history
        log_cost_timeline(runs[first].history, first)
    timeline_png = Path(client.download_artifacts(first, TIMELINE_PNG, str(tmp_path))).read_bytes()

    res = CliRunner().invoke(cli, ["report", "--experiment", name, "--log-to-mlflow"])
    assert res.exit_code == 0, res.output
    reports = client.get_experiment_by_name(REPORTS_EXPERIMENT)
    (report_run,) = client.search_runs([reports.experiment_id], f"params.experiments = '{name}'")
    scatter_png = Path(client.download_artifacts(report_run.info.run_id, "charts/cost_vs_metric.png",
                                                 str(tmp_path))).read_bytes()

    # ---- the runs table: pick the metric column in the UI's "Columns" picker, like a user
    base = server_uri
    driver.get(f"{base}/#/experiments/{exp_id}/runs")
    columns = _wait(driver, "the Columns button",
                    lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid=column-selection-dropdown]"))
    _wait(driver, "the runs to be listed", lambda d: all(r in d.page_source for r in ("train-0", "train-2")))
    columns.click()
    search = _wait(driver, "the column search box",
                   lambda d: d.find_element(By.CSS_SELECTOR, "input[placeholder='Search columns']"))
    search.send_keys("finops/cost_usd")
    _wait(driver, "finops/cost_usd in the column picker", lambda d: _click_text(d, "finops/cost_usd", "dialog"))
    search.send_keys(Keys.ESCAPE)

    def cost_cells(d):
        cells = d.find_elements(By.CSS_SELECTOR, f".ag-row .ag-cell[col-id='{COST_COL}']")
        values = {}
        for cell in cells:
            row = cell.find_element(By.XPATH, "./ancestor::*[@row-id][1]").get_attribute("row-id")
            if cell.text.strip():
                values[row] = cell.text.strip()
        return values if set(values) >= set(runs) else None

    shown = _wait(driver, "the finops/cost_usd column with a value for every run", cost_cells)
    header = driver.find_element(By.CSS_SELECTOR, f".ag-header-cell[col-id='{COST_COL}']")
    assert header.text.strip() == "finops/cost_usd"
    _shot(driver, tmp_path, "runs-table-cost-column.png")
    for rid, cost in costs.items():
        assert float(shown[rid]) == pytest.approx(cost, rel=1e-9), (rid, shown[rid], cost)

    # ---- the charts open in the Artifacts tab
    _open_artifact(driver, base, exp_id, first, "finops", "cost_timeline.png", _png_width(timeline_png))
    _shot(driver, tmp_path, "run-cost-timeline.png")
    _open_artifact(driver, base, reports.experiment_id, report_run.info.run_id, "charts", "cost_vs_metric.png",
                   _png_width(scatter_png))
    _shot(driver, tmp_path, "report-cost-vs-metric.png")


def _header_x(drv, col_id: str):
    from selenium.webdriver.common.by import By

    found = drv.find_elements(By.CSS_SELECTOR, f".ag-header-cell[col-id='{col_id}']")
    return found[0].rect["x"] if found and found[0].is_displayed() else None


def _cells(drv, col_id: str, run_ids) -> dict[str, str] | None:
    """``{run id: text}`` of one runs-table column, once every run has a value."""
    from selenium.webdriver.common.by import By

    values = {}
    for cell in drv.find_elements(By.CSS_SELECTOR, f".ag-row .ag-cell[col-id='{col_id}']"):
        row = cell.find_element(By.XPATH, "./ancestor::*[@row-id][1]").get_attribute("row-id")
        if cell.text.strip():
            values[row] = cell.text.strip()
    return values if set(values) >= set(run_ids) else None


def test_cost_in_dollars_on_run_page_runs_table_and_compare_view(server_uri: str, driver, tmp_path: Path) -> None:
    """A person sees each run's cost in dollars: at the top of the run page (the user's own description
    kept), in the runs table beside accuracy two clicks from it (run name, then the cost line's link),
    and in the compare view's Tags, apart from the allocation-cost metric."""
    from selenium.webdriver.common.by import By

    from mlflow_finops.money import format_usd
    from mlflow_finops.names import TAG_COST, TAG_NOTE

    client = MlflowClient()
    name = f"ui-cost-{uuid.uuid4().hex[:6]}"
    exp_id = mlflow.set_experiment(name).experiment_id
    mlflow_finops.autolog(interval_s=0.1)
    ids: list[str] = []
    try:
        for i in range(3):
            with mlflow.start_run(run_name=f"fit-{i}", description="My baseline" if i == 0 else None) as run:
                burn(0.1 * (i + 1))
                mlflow.log_metric("accuracy", 0.71 + 0.05 * i)
            ids.append(run.info.run_id)
    finally:
        mlflow_finops.autolog(disable=True)
    runs = {rid: client.get_run(rid) for rid in ids}
    dollars = {rid: format_usd(r.data.metrics["finops/cost_usd"]) for rid, r in runs.items()}
    assert all(r.data.tags[TAG_COST] == dollars[rid] for rid, r in runs.items())
    assert runs[ids[0]].data.tags[TAG_NOTE].startswith("My baseline\n\n")  # the user's text kept

    # ---- the runs table, as opened: click the run's name (1), then the cost line's link (2)
    base = server_uri
    first = ids[0]
    driver.get(f"{base}/#/experiments/{exp_id}/runs")
    _wait(driver, "the run's name in the runs table", lambda d: _click_text(d, "fit-0"))

    # ---- the run page: the cost in dollars near the top, above the metrics
    def cost_line(d):
        for el in d.find_elements(By.XPATH, "//*[contains(text(), 'Cost (mlflow-finops):')]/.."):
            if el.is_displayed() and dollars[first] in el.text:
                return el
        return None

    line = _wait(driver, f"the cost line with {dollars[first]} on the run page", cost_line)
    metrics_heading = _wait(driver, "the run page's metrics", lambda d: next(
        (e for e in d.find_elements(By.XPATH, "//*[starts-with(normalize-space(text()), 'Metrics (')]")
         if e.is_displayed()), None))
    assert line.rect["y"] < metrics_heading.rect["y"], "the cost line is below the metrics"
    assert line.rect["y"] < driver.execute_script("return window.innerHeight"), "the cost line needs scrolling"
    assert "My baseline" in driver.find_element(By.TAG_NAME, "body").text
    _shot(driver, tmp_path, "run-page-cost.png")
    tabs = set(driver.window_handles)
    _wait(driver, "the cost line's link", lambda d: _click_text(d, "compare runs by cost"))
    new_tab = _wait(driver, "the runs view the link opens", lambda d: list(set(d.window_handles) - tabs))
    driver.switch_to.window(new_tab[0])  # MLflow opens description links in a new tab

    cost_col, acc_col = f"tags.`{TAG_COST}`", "metrics.`accuracy`"
    shown = _wait(driver, "the cost column with every run", lambda d: _cells(d, cost_col, ids))
    assert {rid: shown[rid] for rid in ids} == dollars
    accuracy = _wait(driver, "the accuracy column", lambda d: _cells(d, acc_col, ids))
    assert [float(accuracy[rid]) for rid in ids] == pytest.approx([0.71, 0.76, 0.81])
    cost_x, acc_x = _header_x(driver, cost_col), _header_x(driver, acc_col)
    assert cost_x is not None and acc_x is not None and abs(cost_x - acc_x) < 300, (cost_x, acc_x)
    header = driver.find_element(By.CSS_SELECTOR, f".ag-header-cell[col-id='{cost_col}']")
    assert header.text.strip() == TAG_COST
    clipped = driver.execute_script(  # Selenium's .text is the whole text even where CSS cuts it off
        "return [...document.querySelectorAll(arguments[0])].flatMap(c => [c, ...c.querySelectorAll('*')])"
        ".filter(e => !e.children.length && e.textContent.trim() && e.scrollWidth > e.clientWidth + 1)"
        ".map(e => e.textContent.trim())",
        f".ag-header-cell[col-id='{cost_col}'], .ag-row .ag-cell[col-id='{cost_col}']")
    assert not clipped, f"cost shown cut off: {clipped}"
    if os.environ.get("FINOPS_DOCS_SCREENSHOT"):  # refresh README's picture: FINOPS_DOCS_SCREENSHOT=1 pytest -k dollars
        driver.save_screenshot(str(ROOT / "docs" / "runs-table-cost.png"))
    _shot(driver, tmp_path, "runs-table-cost.png")

    # ---- the compare view: a row of its own, in dollars, in Tags (not among the metrics)
    driver.get(f"{base}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([exp_id])}")

    def cost_row(d):
        for el in d.find_elements(By.XPATH, f"//*[normalize-space(text())='{TAG_COST}']/ancestor::tr[1]"):
            if el.is_displayed() and all(v in el.text for v in dollars.values()):
                return el
        return None

    row = _wait(driver, "the compare view's cost row in dollars", cost_row)
    tags_heading = driver.find_element(By.XPATH, "//*[normalize-space(text())='Tags']")
    assert row.rect["y"] > tags_heading.rect["y"]
    assert "allocation" not in row.text
    _shot(driver, tmp_path, "compare-cost.png")
