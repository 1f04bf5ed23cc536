"""The FinOps page inside a real ``mlflow server --app-name finops``, as a person sees it in headless Chromium.

One SQLite store with tracked runs of three teams and models (names holding HTML), a nested
and an untracked run, a policy with budgets, and a retrain lineage (drift check run ->
retrain run -> model version). The page's totals per team, model and experiment must equal
``build_report``'s for the same period, the budget's remaining money, the retrain's cost and
gain must show, and a run link must open that run in the MLflow UI of the same server.

``FINOPS_PAGE_SCREENSHOT=docs/finops-page.png`` keeps the page's screenshot there
(``scripts/screenshots.py`` does this for the README). Needs Debian's ``chromium`` +
``chromedriver`` and Selenium (``.ci/install-browser``); the browser test is skipped with the
reason where they are missing. ``finops-basic-auth`` is checked over HTTP where Flask-WTF
(``mlflow[auth]``) is installed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from mlflow_finops.money import format_usd
from mlflow_finops.names import (METRIC_COST_USD, TAG_DRIFT_RUN_ID, TAG_MODEL, TAG_MODEL_VERSION, TAG_NESTED_IN,
                                 TAG_RETRAIN_RUN_ID, TAG_RETRAIN_STATE, TAG_TEAM, monitoring_experiment,
                                 retrains_experiment)
from mlflow_finops.policy import load_policy
from mlflow_finops.spend.budget import budget_status
from mlflow_finops.spend.report import build_report, parse_when
from mlflow_finops.ray_cluster import free_ports
from store_support import template_db

pytestmark = [pytest.mark.server, pytest.mark.slow]

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,1000", "--hide-scrollbars",
]
HTML_TEAM = "r&d <b>lab</b>"  # shown as text, never as markup
POLICY = """
[budgets.churn-monthly]
amount_usd = 40
period = "month"
models = ["churn"]

[budgets.growth-quarter]
amount_usd = 120
period = "quarter"
team = "growth"
"""


@dataclass
class Seeded:
    url: str
    db_uri: str
    policy: Path
    retrain_run: str
    retrain_cost: float
    drift_run: str
    link_run: str
    link_run_name: str
    link_experiment: str


# ------------------------------------------------------------------ the store
def _seed(client: MlflowClient) -> dict[str, str]:
    """Tracked runs over three teams / models / experiments, a nested and an untracked run, a retrain lineage."""
    now = int(time.time() * 1000)
    teams = {"churn": "growth", "fraud": "risk", "ranker": HTML_TEAM}
    out: dict[str, str] = {}
    for e, (model, team) in enumerate(teams.items()):
        exp = client.create_experiment(f"{model}-training")
        for i in range(6):
            start = now - (i * 7 + e) * 3_600_000
            cost = round(0.4 + 0.9 * i + 0.3 * e, 4)
            acc = 0.70 + 0.05 * (i ** 0.5) - 0.03 * (i % 2)  # odd runs: dominated, off the front
            run = client.create_run(exp, start_time=start, run_name=f"{model}-{i}",
                                    tags={TAG_TEAM: team, TAG_MODEL: model})
            client.log_batch(run.info.run_id, metrics=[
                Metric(METRIC_COST_USD, cost, start, 0), Metric("finops/idle_cost_usd", cost * 0.15, start, 0),
                Metric("finops/energy_kwh", cost * 0.3, start, 0), Metric("finops/co2e_kg", cost * 0.08, start, 0),
                Metric("accuracy", acc, start, 0)])
            if i == 3:
                out.update(link_run=run.info.run_id, link_run_name=f"{model}-{i}", link_experiment=exp)
        nested = client.create_run(exp, start_time=now - 3_600_000, run_name=f"{model}-trial",
                                   tags={TAG_TEAM: team, TAG_MODEL: model, TAG_NESTED_IN: out["link_run"]})
        client.log_batch(nested.info.run_id, metrics=[Metric(METRIC_COST_USD, 0.25, now, 0)])
    untracked = client.create_run(client.create_experiment("notebooks"), start_time=now - 7_200_000,
                                  run_name="untracked-notebook")
    client.set_terminated(untracked.info.run_id, "FINISHED")
    # the retrain lineage: drift check run -> retrain run -> model version
    drift = client.create_run(client.create_experiment(monitoring_experiment("churn")), start_time=now - 5_000_000,
                              run_name="drift-check", tags={TAG_MODEL: "churn", TAG_TEAM: "growth"})
    client.log_batch(drift.info.run_id, metrics=[Metric(METRIC_COST_USD, 0.05, now, 0)])
    retrain = client.create_run(client.create_experiment(retrains_experiment("churn")), start_time=now - 4_000_000,
                                run_name="retrain-churn", tags={TAG_MODEL: "churn", TAG_TEAM: "growth"})
    client.log_batch(retrain.info.run_id, metrics=[
        Metric(METRIC_COST_USD, 3.2, now, 0), Metric("eval/champion_accuracy", 0.81, now, 0),
        Metric("eval/challenger_accuracy", 0.84, now, 0), Metric("eval/realized_gain", -0.021, now, 0)], tags=[
        RunTag(TAG_DRIFT_RUN_ID, drift.info.run_id), RunTag(TAG_RETRAIN_STATE, "promoted"),
        RunTag(TAG_MODEL_VERSION, "3")])
    client.set_tag(drift.info.run_id, TAG_RETRAIN_RUN_ID, retrain.info.run_id)
    out.update(retrain_run=retrain.info.run_id, drift_run=drift.info.run_id)
    return out


class AppServer:
    """``mlflow server --app-name NAME`` on 127.0.0.1 (1 worker) in its own process group."""

    def __init__(self, root: Path, db_uri: str, app_name: str, env: dict[str, str]):
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / f"server-{app_name}.log"
        cmd = [str(BIN / "mlflow"), "server", "--app-name", app_name, "--host", "127.0.0.1", "--port",
               str(self.port), "--backend-store-uri", db_uri, "--artifacts-destination", str(root / "artifacts"),
               "--workers", "1"]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=root)

    def wait(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-3000:]}")
            try:
                if requests.get(self.url + "/health", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"mlflow server did not answer in {timeout_s}s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _entry_point_installed(name: str) -> None:
    from mlflow.utils.plugins import get_entry_points

    if name not in {e.name for e in get_entry_points("mlflow.app")}:
        pytest.fail(f"the mlflow.app entry point {name!r} is not installed: run `pip install -e .` again")


@pytest.fixture(scope="module")
def seeded_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, str], Path]:
    root = tmp_path_factory.mktemp("finops-app")
    shutil.copy(template_db(), root / "mlflow.db")
    db_uri = f"sqlite:///{root / 'mlflow.db'}"
    ids = _seed(MlflowClient(db_uri))
    policy = root / "finops.toml"
    policy.write_text(POLICY)
    return root, db_uri, ids, policy


@pytest.fixture(scope="module")
def finops_server(seeded_store) -> Iterator[Seeded]:
    root, db_uri, ids, policy = seeded_store
    _entry_point_installed("finops")
    server = AppServer(root, db_uri, "finops", {"MLFLOW_FINOPS_POLICY": str(policy)})
    try:
        server.wait()
        yield Seeded(server.url, db_uri, policy, ids["retrain_run"], 3.2, ids["drift_run"], ids["link_run"],
                     ids["link_run_name"], ids["link_experiment"])
    finally:
        server.stop()


# ------------------------------------------------------------------ over HTTP (no browser)
def test_page_is_served_by_the_mlflow_server_itself(finops_server: Seeded) -> None:
    """Same port as MLflow's API and UI; names are escaped; a bad date is a 400 that says what is expected."""
    url = finops_server.url
    assert requests.get(f"{url}/health", timeout=10).ok
    api = requests.get(f"{url}/api/2.0/mlflow/experiments/search", params={"max_results": 10}, timeout=10)
    assert api.ok and api.json()["experiments"]
    resp = requests.get(f"{url}/finops", timeout=300)  # redirected to /finops/
    assert resp.status_code == 200 and resp.url.endswith("/finops/"), resp.url
    assert resp.headers["content-type"].startswith("text/html")
    page = resp.text
    assert "r&amp;d &lt;b&gt;lab&lt;/b&gt;" in page and HTML_TEAM not in page
    assert f"#/experiments/{finops_server.link_experiment}/runs/{finops_server.link_run}" in page
    bad = requests.get(f"{url}/finops/", params={"since": "last tuesday"}, timeout=60)
    assert bad.status_code == 400 and "bad date" in bad.text and "<form" in bad.text


# ------------------------------------------------------------------ in the browser
def _browser_missing() -> str | None:
    missing = [b for b in ("chromium", "chromedriver") if shutil.which(b) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (Python)")
    return ", ".join(missing) or None


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[object]:
    missing = _browser_missing()
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["bash", str(ROOT / ".ci" / "install-browser")], capture_output=True, timeout=900)
        import importlib

        importlib.invalidate_caches()
        missing = _browser_missing()
    if missing:
        pytest.skip(f"no browser for the FinOps page check: missing {missing} (run .ci/install-browser)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-', dir=tmp_path)}"]:
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    drv.set_page_load_timeout(300)
    try:
        yield drv
    finally:
        drv.quit()


def _wait(drv, what: str, fn, timeout: float = 60):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(drv, timeout, poll_frequency=0.25).until(lambda d: fn(d))
    except TimeoutException:
        shot = Path(tempfile.gettempdir()) / f"finops-page-failure-{int(time.time())}.png"
        drv.save_screenshot(str(shot))
        raise AssertionError(f"timed out waiting for {what}; screenshot: {shot}") from None


def _table(drv, ident: str) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    return [[td.text.strip() for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in drv.find_elements(By.CSS_SELECTOR, f"table#{ident} tbody tr")]


def _png_look(data: bytes) -> tuple[int, int, int, float]:
    """Width, height, distinct colours and the brightness spread of a PNG: a blank page has one colour."""
    from io import BytesIO

    from PIL import Image, ImageStat

    img = Image.open(BytesIO(data)).convert("RGB")
    colors = img.getcolors(maxcolors=1 << 16)
    return img.width, img.height, len(colors) if colors else 1 << 16, ImageStat.Stat(img.convert("L")).stddev[0]


def test_finops_page_in_the_browser(finops_server: Seeded, driver, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    srv = finops_server
    client = MlflowClient(srv.db_uri)
    # the first, cold rendering (store read, charts drawn) over HTTP, so a slow machine does not hit the
    # browser driver's 120 s command timeout; the browser then gets the page from its cache (same period)
    assert requests.get(f"{srv.url}/finops/?since=30d", timeout=600).ok
    driver.get(f"{srv.url}/finops/?since=30d")
    _wait(driver, "the page's last part", lambda d: d.find_elements(By.ID, "read"), timeout=240)
    assert not driver.find_elements(By.ID, "error")

    # the same period as the page's form, read by the report
    report = build_report(client, since=parse_when("30d"), until=parse_when("now", end=True))
    total = driver.find_element(By.CSS_SELECTOR, "#total-cost b").text
    assert total == format_usd(report.total().cost_usd)
    for level in ("team", "model", "experiment"):
        shown = {row[0].split(" (no finops.")[0]: row[2] for row in _table(driver, f"by-{level}")}
        expected = {g.key: format_usd(g.cost_usd) for g in report.groups(level)}
        assert shown == expected, level
    assert HTML_TEAM in {row[0] for row in _table(driver, "by-team")}  # the text, as typed

    # budgets: remaining money per envelope, as `mlflow-finops budget` says
    statuses = {b.name: b for b in budget_status(load_policy(srv.policy), client)}
    rows = {row[0]: row for row in _table(driver, "budget-table")}
    assert set(rows) == set(statuses)
    for name, st in statuses.items():
        assert rows[name][5] == format_usd(st.remaining_usd), rows[name]
        # the projection moves with the clock (spent / elapsed share): the page's is a little older
        assert float(rows[name][6].lstrip("$").replace(",", "")) == pytest.approx(st.projected_usd, rel=0.02)
    assert driver.find_elements(By.CSS_SELECTOR, "#budgets svg")  # the burn-down chart

    # the retrain: what it cost and what it bought, with its lineage
    (retrain,) = [r for r in _table(driver, "retrains") if r[1] == srv.retrain_run[:8]]
    assert retrain[0] == "churn" and retrain[3] == "promoted" and retrain[4] == srv.drift_run[:8]
    assert retrain[5] == "v3" and retrain[6] == format_usd(srv.retrain_cost)
    assert retrain[8] == "+3.0 pt bought" and retrain[9] == f"{format_usd(srv.retrain_cost / 3.0)} / pt"
    assert retrain[10] == "-2.1 pt"  # what it realized on the next labelled window

    # one Pareto chart per training experiment (inline SVG)
    assert len(driver.find_elements(By.CSS_SELECTOR, "#fronts section.front svg")) == 3

    # a screenshot of the whole page: not blank; kept for the README when asked
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(height + 40, 6000))
    png = driver.get_screenshot_as_png()
    width, h, colors, spread = _png_look(png)
    assert width >= 1000 and h >= 1000 and colors > 50 and spread > 10, (width, h, colors, spread)
    keep = os.environ.get("FINOPS_PAGE_SCREENSHOT")
    (Path(keep) if keep else tmp_path / "finops-page.png").write_bytes(png)
    driver.set_window_size(1400, 1000)

    # a run link opens that run in the MLflow UI of the same server
    link = driver.find_element(By.XPATH, f"//table[@id='top-runs']//a[text()='{srv.link_run_name}']")
    href = link.get_attribute("href")
    assert href == f"{srv.url}/#/experiments/{srv.link_experiment}/runs/{srv.link_run}"
    link.click()
    _wait(driver, "the run's page in the MLflow UI",
          lambda d: srv.link_run in d.current_url and srv.link_run_name in d.find_element(By.TAG_NAME, "body").text)


# ------------------------------------------------------------------ with MLflow's basic auth
def test_basic_auth_guards_the_page(seeded_store, tmp_path: Path) -> None:
    """``--app-name finops-basic-auth``: no credentials 401, a user 403 (the page sums every experiment), an admin 200."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic auth needs Flask-WTF: pip install 'mlflow[auth]'")
    _, db_uri, _, _ = seeded_store
    _entry_point_installed("finops-basic-auth")
    auth_ini = tmp_path / "basic_auth.ini"
    auth_ini.write_text("[mlflow]\ndefault_permission = READ\n"
                        f"database_uri = sqlite:///{tmp_path / 'auth.db'}\n"
                        "admin_username = admin\nadmin_password = finops-Admin-pw-1\n"
                        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
           "MLFLOW_FLASK_SERVER_SECRET_KEY": base64.b64encode(os.urandom(24)).decode()}
    server = AppServer(tmp_path, db_uri, "finops-basic-auth", env)
    try:
        server.wait()
        url = server.url
        assert requests.get(f"{url}/finops/", timeout=30).status_code == 401
        admin = ("admin", "finops-Admin-pw-1")
        made = requests.post(f"{url}/api/2.0/mlflow/users/create", auth=admin, timeout=30,
                             json={"username": "analyst", "password": "analyst-Pw-12345"})
        assert made.ok, made.text
        user = requests.get(f"{url}/finops/", auth=("analyst", "analyst-Pw-12345"), timeout=30)
        assert user.status_code == 403  # MLflow's own gate (fail-closed on routes it does not know), else the page's
        assert requests.get(f"{url}/api/2.0/mlflow/experiments/search", params={"max_results": 5},
                            auth=("analyst", "analyst-Pw-12345"), timeout=30).ok  # the user still reads MLflow
        # an admin sees the page (a period without runs: nothing to draw, the check stays quick)
        page = requests.get(f"{url}/finops/", params={"since": "2001-01-01", "until": "2001-01-02"}, auth=admin,
                            timeout=120)
        assert page.status_code == 200 and 'id="summary"' in page.text and 'id="read"' in page.text
        # the reports' projection: every experiment's runs, so admins only; a user's report uses search_runs
        body = {"experiment_ids": ["0"], "view": "active"}
        assert requests.post(f"{url}/finops/api/report-runs", json=body, auth=("analyst", "analyst-Pw-12345"),
                             timeout=30).status_code == 403
        answer = requests.post(f"{url}/finops/api/report-runs", json=body, auth=admin, timeout=60)
        lines = answer.text.splitlines()
        assert answer.status_code == 200 and json.loads(lines[-1]) == {"end": True, "runs": len(lines) - 2}
    finally:
        server.stop()
