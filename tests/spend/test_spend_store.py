"""spend()'s store query at its edges, on a real SQLite MLflow store (a copied empty one: fast).

What counts: one run once even when it matches a model and the team, start times
at the period's edges, deleted runs, zero costs; what does not: nested runs, runs
of another scope or period, runs without a cost. Paging and the progress callback
read every page.
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from store_support import copied_store, template_db  # noqa: F401

from mlflow_finops.policy import BudgetEnvelope
from mlflow_finops.spend.budget import spend

UTC = timezone.utc
NOW = datetime(2026, 11, 16, 12, 0, tzinfo=UTC)  # 15.5 days into a 30-day November
NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def add_run(client: MlflowClient, exp: str, start: datetime, cost: float | None, **tags: str) -> str:
    """A run as the tracker leaves it: finops.* tags and a final finops/cost_usd (None: untracked)."""
    run = client.create_run(exp, start_time=ms(start), tags={f"finops.{k}": v for k, v in tags.items()})
    if cost is not None:
        client.log_batch(run.info.run_id, metrics=[Metric("finops/cost_usd", cost, ms(start), 0)])
    return run.info.run_id


@pytest.fixture
def client(copied_store: str) -> MlflowClient:
    return MlflowClient(copied_store)


@pytest.fixture
def exp(client: MlflowClient) -> str:
    return client.create_experiment("train")


def test_a_run_of_the_model_and_the_team_counts_once(client: MlflowClient, exp: str) -> None:
    add_run(client, exp, NOV + timedelta(days=2), 10.0, model="churn", team="growth")
    add_run(client, exp, NOV + timedelta(days=3), 1.0, model="fraud", team="growth")  # through the team
    add_run(client, exp, NOV + timedelta(days=4), 2.0, model="churn", team="risk")  # through the model
    add_run(client, exp, NOV + timedelta(days=5), 4.0, model="other", team="risk")  # neither
    st = spend(BudgetEnvelope(amount_usd=100, models=["churn", "fraud"], team="growth"), client, NOW)
    assert (st.runs, st.spent_usd) == (3, 13.0)
    assert [c for _, c in st.points] == [10.0, 1.0, 2.0]


def test_period_edges_start_inclusive_end_exclusive(client: MlflowClient, exp: str) -> None:
    add_run(client, exp, NOV - MS, 100.0, model="m")  # October's last millisecond
    add_run(client, exp, NOV, 1.0, model="m")  # November's first
    add_run(client, exp, DEC - MS, 2.0, model="m")  # November's last
    add_run(client, exp, DEC, 200.0, model="m")  # December's first
    st = spend(BudgetEnvelope(amount_usd=10, models=["m"]), client, NOW)
    assert st.points == ((NOV.timestamp(), 1.0), ((DEC - MS).timestamp(), 2.0))
    assert (st.period_start, st.period_end, st.now) == (NOV, DEC, NOW)


def test_the_period_follows_now_and_a_naive_now_is_utc(client: MlflowClient, exp: str) -> None:
    add_run(client, exp, NOV - timedelta(days=1), 7.0, model="m")
    add_run(client, exp, NOV + timedelta(days=1), 1.0, model="m")
    october = spend(BudgetEnvelope(amount_usd=10, models=["m"]), client, datetime(2026, 10, 20))
    assert (october.spent_usd, october.period_start, october.now) == (7.0, datetime(2026, 10, 1, tzinfo=UTC),
                                                                       datetime(2026, 10, 20, tzinfo=UTC))


def test_what_does_not_count(client: MlflowClient, exp: str) -> None:
    parent = add_run(client, exp, NOV + timedelta(days=1), 3.0, model="m")
    add_run(client, exp, NOV + timedelta(days=1), 50.0, model="m", nested_in=parent)  # inside the parent's
    add_run(client, exp, NOV + timedelta(days=2), None, model="m")  # untracked
    add_run(client, exp, NOV + timedelta(days=3), 60.0, model="m2")  # another model
    add_run(client, exp, NOV + timedelta(days=4), 70.0, team="m")  # a team named like the model
    add_run(client, exp, NOV + timedelta(days=5), 0.0, model="m")  # free, but a run of the scope
    st = spend(BudgetEnvelope(amount_usd=10, models=["m"]), client, NOW)
    assert (st.runs, st.spent_usd) == (2, 3.0)


def test_deleted_runs_count_the_money_was_spent(client: MlflowClient, exp: str) -> None:
    client.delete_run(add_run(client, exp, NOV + timedelta(days=1), 4.0, model="m"))
    other = client.create_experiment("gone")
    add_run(client, other, NOV + timedelta(days=2), 5.0, model="m")
    client.delete_experiment(other)
    assert spend(BudgetEnvelope(amount_usd=10, models=["m"]), client, NOW).spent_usd == 9.0


def test_only_the_experiments_given(client: MlflowClient, exp: str) -> None:
    other = client.create_experiment("drift")
    add_run(client, exp, NOV + timedelta(days=1), 4.0, model="m")
    add_run(client, other, NOV + timedelta(days=2), 5.0, model="m")
    env = BudgetEnvelope(amount_usd=10, models=["m"])
    assert spend(env, client, NOW, experiment_ids=[other]).spent_usd == 5.0
    assert spend(env, client, NOW, experiment_ids=iter([exp, other])).spent_usd == 9.0
    assert spend(env, client, NOW, experiment_ids=[]).runs == 0


def test_a_name_with_both_quotes_is_matched_exactly(client: MlflowClient, exp: str) -> None:
    odd = """it's "churn" """.strip()
    add_run(client, exp, NOV + timedelta(days=1), 4.0, model=odd)
    add_run(client, exp, NOV + timedelta(days=2), 5.0, model="churn")
    add_run(client, exp, NOV + timedelta(days=3), 6.0, team=odd)
    assert spend(BudgetEnvelope(amount_usd=10, models=[odd]), client, NOW).points == (
        ((NOV + timedelta(days=1)).timestamp(), 4.0),)
    assert spend(BudgetEnvelope(amount_usd=10, team=odd), client, NOW).spent_usd == 6.0


def test_every_page_is_read_and_reported(client: MlflowClient, exp: str) -> None:
    for day in range(5):
        add_run(client, exp, NOV + timedelta(days=day), 1.0 + day, model="m")
    add_run(client, exp, NOV + timedelta(days=6), 9.0, model="other")  # not read: the store filters it out
    pages: list[int] = []
    st = spend(BudgetEnvelope(amount_usd=10, models=["m"]), client, NOW, page_size=2, on_page=pages.append)
    assert (st.runs, st.spent_usd) == (5, 15.0)
    assert pages == [2, 2, 1]
    pages.clear()
    spend(BudgetEnvelope(amount_usd=10, models=["m"]), client, NOW, on_page=pages.append)
    assert pages == [5]


def test_the_client_given_is_the_store_read(client: MlflowClient, exp: str, tmp_path: Path) -> None:
    add_run(client, exp, NOV + timedelta(days=1), 4.0, model="m")
    other_db = tmp_path / "other.db"
    shutil.copy(template_db(), other_db)
    other = MlflowClient(f"sqlite:///{other_db}")
    env = BudgetEnvelope(amount_usd=10, models=["m"])
    assert spend(env, other, NOW).runs == 0
    assert spend(env, None, NOW).runs == 1  # none given: the tracking URI's store


def test_status_figures_and_the_debug_line(client: MlflowClient, exp: str, caplog: pytest.LogCaptureFixture) -> None:
    add_run(client, exp, NOV + timedelta(days=1), 8.0, model="m")
    with caplog.at_level(logging.DEBUG, logger="mlflow_finops.spend.budget"):
        st = spend(BudgetEnvelope(amount_usd=10, models=["m"], warn_at=0.8), client, NOW, name="churn")
    assert (st.name, st.amount_usd, st.spent_usd, st.remaining_usd) == ("churn", 10, 8.0, 2.0)
    assert st.projected_usd == pytest.approx(8.0 / (15.5 / 30))
    assert st.warn  # 8 >= 0.8 * 10: the threshold itself warns
    assert st.to_dict()["elapsed_fraction"] == 0.516667  # 15.5 / 30, to the sixth decimal
    assert [r.getMessage() for r in caplog.records if r.name == "mlflow_finops.spend.budget"] == [
        "budget churn: $8.00 of $10.00 over 1 run(s)"]


def test_at_the_period_start_the_projection_is_the_spend(client: MlflowClient, exp: str) -> None:
    add_run(client, exp, NOV, 3.0, model="m")
    st = spend(BudgetEnvelope(amount_usd=10, models=["m"]), client, NOV)
    assert (st.elapsed_fraction, st.spent_usd, st.projected_usd) == (0.0, 3.0, 3.0)
    empty = spend(BudgetEnvelope(amount_usd=10, models=["none"]), client, NOW)
    assert (empty.runs, empty.spent_usd, empty.projected_usd, empty.points, empty.warn) == (0, 0, 0, (), False)
