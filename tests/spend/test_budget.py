"""Budget envelopes: policy validation, calendar periods, and spend read from a real MLflow store."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

import mlflow_finops
from mlflow_finops.spend.budget import budget_status, envelopes_for, period_bounds, spend
from mlflow_finops.cli import EXIT_BUDGET_WARN, cli
from mlflow_finops.policy import BudgetEnvelope, Policy, PolicyError

UTC = timezone.utc
NOW = datetime(2026, 11, 16, 12, 0, tzinfo=UTC)  # 15.5 days into a 30-day November


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def make_run(client: MlflowClient, exp: str, start: datetime, cost: float | None, **tags: str) -> str:
    """A run as the tracker leaves it: finops.* tags and a final finops/cost_usd (None = untracked)."""
    all_tags = {f"finops.{k}": v for k, v in tags.items()}
    if cost is not None:
        all_tags["finops.tracked"] = "true"
    run = client.create_run(exp, start_time=ms(start), tags=all_tags)
    if cost is not None:
        client.log_batch(run.info.run_id, metrics=[Metric("finops/cost_usd", cost, ms(start), 1)])
    client.set_terminated(run.info.run_id, end_time=ms(start) + 1000)
    return run.info.run_id


# ------------------------------------------------------------------ policy
@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"amount_usd": -5, "team": "a"}, "[budgets].b.amount_usd"),
        ({"amount_usd": 0, "team": "a"}, "[budgets].b.amount_usd"),
        ({"amount_usd": 5, "team": "a", "priority": "vip"}, "[budgets].b.priority"),
        ({"amount_usd": 5, "team": "a", "period": "fortnight"}, "[budgets].b.period"),
        ({"amount_usd": 5, "team": "a", "per_job_usd": -1}, "[budgets].b.per_job_usd"),
        ({"amount_usd": 5, "team": "a", "warn_at": 1.5}, "[budgets].b.warn_at"),
        ({"amount_usd": 5, "team": "a", "timezone": "Mars/Olympus"}, "[budgets].b.timezone"),
        ({"amount_usd": 5}, "models = [...] and/or team"),
        ({"amount_usd": 5, "team": "a", "colour": "red"}, "[budgets].b.colour: unknown key"),
    ],
)
def test_bad_envelope_is_rejected_naming_the_key(section: dict, needle: str) -> None:
    with pytest.raises(PolicyError) as err:
        Policy.from_dict({"budgets": {"b": section}}, source="finops.toml")
    assert needle in str(err.value)


def test_envelope_defaults_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "finops.toml"
    path.write_text('[budgets.churn]\namount_usd = 200\nmodels = ["churn"]\n'
                    '[budgets.research]\namount_usd = 50\nteam = "research"\nperiod = "week"\n'
                    'priority = "exploratory"\ntimezone = "Europe/Paris"\nper_job_usd = 5\n')
    policy = mlflow_finops.load_policy(path)
    churn, research = policy.budgets["churn"], policy.budgets["research"]
    assert (churn.period, churn.priority, churn.warn_at, churn.timezone) == ("month", "standard", 0.8, "UTC")
    assert (research.period, research.priority, research.per_job_usd) == ("week", "exploratory", 5)
    assert envelopes_for(policy, model="churn", team="research") == ["churn", "research"]
    assert envelopes_for(policy, model="fraud") == []


# ------------------------------------------------------------------ periods
def test_period_bounds() -> None:
    now = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)  # a Wednesday
    start, end = period_bounds("day", "UTC", now)
    assert (start.isoformat(), end.isoformat()) == ("2026-11-18T00:00:00+00:00", "2026-11-19T00:00:00+00:00")
    start, end = period_bounds("week", "UTC", now)
    assert (start.date().isoformat(), end.date().isoformat(), start.weekday()) == ("2026-11-16", "2026-11-23", 0)
    start, end = period_bounds("quarter", "UTC", now)
    assert (start.date().isoformat(), end.date().isoformat()) == ("2026-10-01", "2027-01-01")
    start, end = period_bounds("year", "UTC", now)
    assert (start.year, end.year) == (2026, 2027)
    start, end = period_bounds("month", "UTC", datetime(2026, 12, 31, 23, 0, tzinfo=UTC))
    assert (start.date().isoformat(), end.date().isoformat()) == ("2026-12-01", "2027-01-01")


def test_period_follows_the_envelope_timezone() -> None:
    # 23:30 UTC on Dec 31 is already Jan 1 in Paris: a new month and a new year there.
    now = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)
    start, _ = period_bounds("month", "Europe/Paris", now)
    assert start.isoformat() == "2027-01-01T00:00:00+01:00"
    # the day of the spring DST change in Paris lasts 23 hours
    start, end = period_bounds("day", "Europe/Paris", datetime(2026, 3, 29, 12, tzinfo=UTC))
    assert end.timestamp() - start.timestamp() == 23 * 3600


# ------------------------------------------------------------------ spend
@pytest.fixture
def store(sqlite_uri: str) -> MlflowClient:
    """Runs in two experiments (training and drift checks) across two months."""
    client = MlflowClient()
    train = client.create_experiment("churn-train")
    drift = client.create_experiment("finops-monitoring/churn")
    parent = make_run(client, train, datetime(2026, 11, 3, tzinfo=UTC), 10.0, model="churn", team="growth")
    make_run(client, train, datetime(2026, 11, 3, 1, tzinfo=UTC), 4.0, model="churn", team="growth", nested_in=parent)
    make_run(client, train, datetime(2026, 11, 10, tzinfo=UTC), 20.0, model="churn", team="growth")
    make_run(client, drift, datetime(2026, 11, 12, tzinfo=UTC), 2.5, model="churn", team="platform")
    make_run(client, train, datetime(2026, 10, 30, tzinfo=UTC), 100.0, model="churn", team="growth")  # last month
    make_run(client, train, datetime(2026, 11, 11, tzinfo=UTC), None, model="churn", team="growth")  # untracked
    make_run(client, train, datetime(2026, 11, 13, tzinfo=UTC), 7.0, model="fraud", team="growth")
    return client


def test_spend_counts_scope_period_and_skips_nested_and_untracked(store: MlflowClient) -> None:
    env = BudgetEnvelope(amount_usd=50, models=["churn"])
    st = spend(env, store, NOW, name="churn", page_size=2)  # small pages: the paging path is used
    assert st.runs == 3  # 10 + 20 (training) + 2.5 (drift check); not nested, not October, not untracked
    assert st.spent_usd == pytest.approx(32.5)
    assert st.remaining_usd == pytest.approx(17.5)
    assert st.elapsed_fraction == pytest.approx(15.5 / 30)
    assert st.projected_usd == pytest.approx(32.5 / (15.5 / 30))
    assert st.projected_over and not st.warn and not st.exceeded  # 32.5 < 0.8 * 50
    assert [c for _, c in st.points] == [10.0, 20.0, 2.5]
    assert st.period_start.isoformat() == "2026-11-01T00:00:00+00:00"
    assert st.allows(10) and not st.allows(20)


def test_models_and_team_scope_is_a_union_without_double_counting(store: MlflowClient) -> None:
    env = BudgetEnvelope(amount_usd=40, models=["churn"], team="growth", warn_at=0.9, per_job_usd=5)
    st = spend(env, store, NOW)
    assert st.spent_usd == pytest.approx(10 + 20 + 2.5 + 7)  # the fraud run counts through the team
    assert st.runs == 4
    assert st.warn and not st.exceeded  # 39.5 >= 0.9 * 40
    assert not st.allows(6)  # over the per-job cap even though money remains


def test_budget_status_for_all_envelopes_and_unknown_name(store: MlflowClient) -> None:
    policy = Policy.from_dict({"budgets": {
        "churn": {"amount_usd": 30, "models": ["churn"]},
        "platform": {"amount_usd": 10, "team": "platform", "period": "day"},
    }})
    statuses = budget_status(policy, store, NOW)
    assert [(s.name, s.runs) for s in statuses] == [("churn", 3), ("platform", 0)]  # platform's run is not today
    assert statuses[0].exceeded and statuses[0].remaining_usd == pytest.approx(-2.5)
    with pytest.raises(KeyError, match="unknown budget envelope 'nope'"):
        budget_status(policy, store, NOW, names=["nope"])


def test_spend_of_a_real_autologged_run(sqlite_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_FINOPS_MODEL", "churn")
    mlflow_finops.autolog(interval_s=0.1)
    mlflow.set_experiment("real")
    with mlflow.start_run() as run:
        deadline = time.process_time() + 0.3
        while time.process_time() < deadline:
            pass
    mlflow_finops.autolog(disable=True)
    logged = MlflowClient().get_run(run.info.run_id).data.metrics["finops/cost_usd"]
    st = spend(BudgetEnvelope(amount_usd=1, models=["churn"], period="day"))
    assert st.runs == 1 and logged > 0
    assert st.spent_usd == pytest.approx(logged)


# ------------------------------------------------------------------ CLI
def _policy(tmp_path: Path, text: str) -> str:
    path = tmp_path / "finops.toml"
    path.write_text(text)
    return str(path)


def test_cli_budget_json_check_and_warning(store: MlflowClient, tmp_path: Path) -> None:
    now_start = datetime.now(UTC)
    train = store.get_experiment_by_name("churn-train").experiment_id
    make_run(store, train, now_start, 9.0, model="churn")
    pol = _policy(tmp_path, '[budgets.churn]\namount_usd = 10\nmodels = ["churn"]\nperiod = "day"\n')
    runner = CliRunner()
    res = runner.invoke(cli, ["budget", "--policy", pol, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data[0]["spent_usd"] == pytest.approx(9.0) and data[0]["warn"] is True and data[0]["runs"] == 1
    assert "Warning: budget 'churn' has spent $9.00 of $10.00 (90% >= warn_at 80%)" in res.stderr
    res = runner.invoke(cli, ["budget", "--policy", pol, "--check", "--charts", str(tmp_path / "charts")])
    assert res.exit_code == EXIT_BUDGET_WARN
    assert "churn" in res.stdout and "WARN" in res.stdout
    assert (tmp_path / "charts" / "budget_burndown.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "charts" / "budget_burndown.html").read_text()


def test_cli_budget_bad_input_exits_2(sqlite_uri: str, tmp_path: Path) -> None:
    runner = CliRunner()
    empty = _policy(tmp_path, "[tags]\nteam = 'a'\n")
    res = runner.invoke(cli, ["budget", "--policy", empty])
    assert res.exit_code == 2 and "no budget envelopes" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    bad = _policy(tmp_path, "[budgets.x]\namount_usd = -3\nteam = 'a'\n")
    res = runner.invoke(cli, ["budget", "--policy", bad])
    assert res.exit_code == 2 and "[budgets].x.amount_usd" in res.stderr
    ok = _policy(tmp_path, "[budgets.x]\namount_usd = 3\nteam = 'a'\n")
    res = runner.invoke(cli, ["budget", "--policy", ok, "--name", "y"])
    assert res.exit_code == 2 and "unknown budget envelope 'y' (known: x)" in res.stderr
