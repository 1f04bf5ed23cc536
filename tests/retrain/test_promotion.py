"""The job's verdict on a real SQLite registry (no Ray): @champion moves only for a challenger
better by more than the margin."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LinearRegression

from mlflow_finops.retrain.job import load_config, register_and_promote
from mlflow_finops.retrain.ledger import FileRecord, Ledger
from mlflow_finops.retrain.state import RetrainState
from mlflow_finops.retrain.update import evaluate


@pytest.mark.parametrize(
    "challenger_offset, margin, verdict, champion_after",
    [
        (0.0, 0.1, RetrainState.PROMOTED, "2"),  # rmse 0.5 -> 0: better by more than the margin
        (0.0, 1.0, RetrainState.NOT_PROMOTED, "1"),  # better, by less than the margin
        (2.0, 0.0, RetrainState.NOT_PROMOTED, "1"),  # worse: rmse 2 against 0.5
    ],
    ids=["better-by-more", "better-by-less", "worse"],
)
def test_champion_moves_only_for_a_challenger_better_by_more_than_the_margin(
    tmp_path: Path, sqlite_uri: str, challenger_offset: float, margin: float, verdict: RetrainState,
    champion_after: str,
) -> None:
    (tmp_path / "finops.toml").write_text(
        f'[models.m]\ncurrent = "new"\ntarget = "y"\nregistered_model = "m-reg"\n'
        f'[models.m.retrain]\nmetric = "rmse"\nmargin = {margin}\n'
    )
    X = pd.DataFrame({"x": np.arange(40.0)})
    data = X.assign(y=2 * X["x"])
    champion = LinearRegression().fit(X, data["y"] + 0.5)  # rmse 0.5 on the held-out rows
    challenger = LinearRegression().fit(X, data["y"] + challenger_offset)
    client = MlflowClient()
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(champion, name="model", registered_model_name="m-reg",
                                        pip_requirements=["scikit-learn"])  # no inference: seconds
    client.set_registered_model_alias("m-reg", "champion", str(info.registered_model_version))
    cfg = load_config(str(tmp_path / "finops.toml"), "m")
    learned = Ledger((FileRecord("0" * 64, 100, 40, 30, "new.csv"),))
    with mlflow.start_run() as run:
        ev = evaluate(champion, challenger, X.iloc[30:], data["y"].iloc[30:], cfg.retrain)
        state = register_and_promote(cfg, client, client.get_model_version_by_alias("m-reg", "champion"),
                                     challenger, ev, path="refit", rows=data.iloc[:30], ledger=learned,
                                     update_note=[])
    assert state == verdict
    tags = client.get_run(run.info.run_id).data.tags
    assert tags["finops.retrain_state"] == verdict.value and tags["finops.model_version"] == "2"
    assert str(client.get_model_version_by_alias("m-reg", "champion").version) == champion_after
    assert str(client.get_model_version_by_alias("m-reg", "challenger").version) == "2"
    # every challenger has its ledger; only a promoted one a drift reference (the rows it learned)
    v2 = client.get_model_version("m-reg", "2").tags
    assert Ledger.from_json(Path(v2["finops.learned"]).read_text()) == learned
    assert Path(v2["finops.learned"]) == tmp_path / "references" / "m-reg-v2.learned.json"
    assert ("finops.reference" in v2) == (verdict == RetrainState.PROMOTED)
    if "finops.reference" in v2:
        pd.testing.assert_frame_equal(pd.read_parquet(v2["finops.reference"]), data.iloc[:30])
