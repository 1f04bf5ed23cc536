"""The registry's writes on a real SQLite store: a first champion with its validation score, a
challenger in its champion's format, a ledger beside the references."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from sklearn.ensemble import RandomForestClassifier

from mlflow_finops.names import TAG_LEARNED
from mlflow_finops.retrain.registry import ledger_path, register_champion, register_challenger, write_ledger


def _forest(seed: int = 0) -> RandomForestClassifier:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(60, 2)), columns=["a", "b"])
    return RandomForestClassifier(n_estimators=3, random_state=seed).fit(X, (X.a > 0).astype(int))


def test_a_champion_is_registered_in_skops_with_its_validation_score(sqlite_uri: str) -> None:
    client = MlflowClient()
    with mlflow.start_run():
        first = register_champion(_forest(), "m-reg", metric="accuracy", score=0.8125)
    assert first == "1" and str(client.get_model_version_by_alias("m-reg", "champion").version) == "1"
    assert client.get_model_version("m-reg", "1").tags["finops.accuracy"] == "0.812500"
    flavor = mlflow.models.get_model_info("models:/m-reg/1").flavors["sklearn"]
    assert flavor["serialization_format"] == "skops" and flavor["skops_trusted_types"]
    with mlflow.start_run():
        second = register_champion(_forest(1), "m-reg")  # no score: no tag
    assert second == "2" and str(client.get_model_version_by_alias("m-reg", "champion").version) == "2"
    assert "finops.accuracy" not in client.get_model_version("m-reg", "2").tags
    assert mlflow.sklearn.load_model("models:/m-reg@champion").n_estimators == 3  # it loads with its types


def test_a_challenger_keeps_its_champions_format_and_its_ledger_is_tagged(sqlite_uri: str, tmp_path: Path) -> None:
    client = MlflowClient()
    with mlflow.start_run():
        register_champion(_forest(), "m-reg")
        version = register_challenger(client, _forest(2), "m-reg", {"finops.update_path": "refit"})
    assert version == "2" and str(client.get_model_version_by_alias("m-reg", "challenger").version) == "2"
    assert str(client.get_model_version_by_alias("m-reg", "champion").version) == "1"  # not promoted here
    assert client.get_model_version("m-reg", "2").tags["finops.update_path"] == "refit"
    champion, challenger = (mlflow.models.get_model_info(f"models:/m-reg/{v}").flavors["sklearn"] for v in "12")
    assert challenger["skops_trusted_types"] == champion["skops_trusted_types"]
    where = write_ledger(client, str(tmp_path), "m-reg", "2", '{"files": []}')
    assert where == ledger_path(str(tmp_path), "m-reg", "2") and Path(where).read_text() == '{"files": []}'
    assert client.get_model_version("m-reg", "2").tags[TAG_LEARNED] == where
