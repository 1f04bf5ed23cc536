"""What a retrain learns, run in-process on a real SQLite registry (no Ray): each row once, the
held-out rows the next time, the policy's columns only; the drift reference is the rows learned."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression

from mlflow_finops.names import TAG_LEARNED, TAG_REFERENCE
from mlflow_finops.retrain.job import file_sha256, load_config, run_job
from mlflow_finops.retrain.ledger import Ledger
from mlflow_finops.retrain.state import RetrainState
from store_support import copied_store, template_db  # noqa: F401

REG = "m-reg"


def _rows(ids: range, shift: float) -> pd.DataFrame:
    """Rows whose label is almost only ``shift``: any tree fitted on new rows beats the champion."""
    x = np.sin(np.array(ids, dtype=float)) * 0.1
    return pd.DataFrame({"id": list(ids), "x": x, "y": x + shift})


def _write(path: Path, frame: pd.DataFrame, mtime: float) -> Path:
    frame.to_csv(path, index=False)
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def root(tmp_path: Path, copied_store: str) -> Path:
    (tmp_path / "new").mkdir()  # copied_store works in tmp_path: the store's artifacts land there
    return tmp_path


def _setup(root: Path, champion, *, retrain: str = "", model: str = "", ref: pd.DataFrame | None = None) -> None:
    """Policy, reference file and a registered @champion (v1) fitted on the reference's x."""
    (root / "finops.toml").write_text(
        f'[models.m]\nreference = "ref.csv"\ncurrent = "new"\ntarget = "y"\nregistered_model = "{REG}"\n'
        f'drop = ["id"]\n{model}'
        f'[models.m.retrain]\nmetric = "rmse"\nrefit_max_rows = 0\nwarm_start_step = 2\nwarm_start_steps = 1\n{retrain}'
    )
    ref = _rows(range(40), 0.0) if ref is None else ref
    _write(root / "ref.csv", ref, 100.0)
    champion.fit(ref[[c for c in ref.columns if c not in ("id", "y")]], ref["y"])
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(champion, name="model", registered_model_name=REG,
                                        serialization_format="cloudpickle",
                                        pip_requirements=["scikit-learn"])  # no inference: seconds
    MlflowClient().set_registered_model_alias(REG, "champion", str(info.registered_model_version))


def _retrain(root: Path) -> tuple[RetrainState, dict]:
    """One retrain in this process; its verdict and its run's tags (with the run's learned.json)."""
    mlflow.set_experiment("retrains")
    with mlflow.start_run() as run:
        pass
    state = run_job(load_config(str(root / "finops.toml"), "m"), run.info.run_id)
    tags = MlflowClient().get_run(run.info.run_id).data.tags
    try:
        tags["learned.json"] = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/learned.json"))
    except Exception:  # no challenger registered: nothing learned
        pass
    return state, tags


def _version(n: str) -> dict[str, str]:
    return MlflowClient().get_model_version(REG, n).tags


def _ledger(version: str) -> Ledger:
    return Ledger.from_json(Path(_version(version)[TAG_LEARNED]).read_text())


def _champion() -> str:
    return str(MlflowClient().get_model_version_by_alias(REG, "champion").version)


def _reference_ids(version: str) -> list[int]:
    return pd.read_parquet(_version(version)[TAG_REFERENCE])["id"].tolist()


def _learned(tags: dict) -> list[tuple[str, int, int]]:
    return [(u["name"], u["from_row"], u["rows_learned"]) for u in tags["learned.json"]["update"]]


def test_each_row_is_learned_once_and_held_out_rows_next_time(root: Path) -> None:
    _setup(root, RandomForestRegressor(n_estimators=3, random_state=0))
    w1 = _write(root / "new" / "w1.csv", _rows(range(100, 120), 10.0), 1000.0)
    state, tags = _retrain(root)
    # 20 new rows, the newest 4 held out: 16 learned; a user-trained v1 learned the reference, whole
    assert state == RetrainState.PROMOTED and _champion() == "2"
    assert _learned(tags) == [("w1.csv", 0, 16)]
    assert [(f.name, f.rows, f.learned) for f in _ledger("2").files] == [("ref.csv", 40, 40), ("w1.csv", 20, 16)]
    assert _ledger("2").get(file_sha256(root / "ref.csv")) is not None
    assert _reference_ids("2") == list(range(100, 116))  # the drift reference: the rows learned, no holdout
    assert tags["learned.json"]["files"] == _ledger("2").to_dict()["files"]

    # renamed and touched: the same content, so only its 4 held-out rows are new (1 held out again)
    w1.rename(root / "new" / "w1-renamed.csv")
    os.utime(root / "new" / "w1-renamed.csv", (5000.0, 5000.0))
    state, tags = _retrain(root)
    assert state == RetrainState.PROMOTED and _champion() == "3"
    assert _learned(tags) == [("w1-renamed.csv", 16, 3)]
    assert [(f.name, f.rows, f.learned) for f in _ledger("3").files] == [("ref.csv", 40, 40),
                                                                        ("w1-renamed.csv", 20, 19)]
    assert _reference_ids("3") == [116, 117, 118]

    # a new window: the row held out last time is learned now, before the new file's rows
    _write(root / "new" / "w2.csv", _rows(range(200, 220), 10.0), 6000.0)
    state, tags = _retrain(root)
    assert state == RetrainState.PROMOTED
    assert _learned(tags) == [("w1-renamed.csv", 19, 1), ("w2.csv", 0, 16)]
    assert _reference_ids("4") == [119, *range(200, 216)]
    assert sum(f.learned for f in _ledger("4").files) == 40 + 20 + 16  # every row once
    # the id column is never learned: the challengers know x only
    assert list(mlflow.sklearn.load_model(f"models:/{REG}/4").feature_names_in_) == ["x"]


def test_a_challenger_not_promoted_leaves_the_champions_ledger(root: Path) -> None:
    _setup(root, RandomForestRegressor(n_estimators=3, random_state=0), retrain="margin = 1000.0\n")
    _write(root / "new" / "w1.csv", _rows(range(100, 120), 10.0), 1000.0)
    state, first = _retrain(root)
    assert state == RetrainState.NOT_PROMOTED and _champion() == "1"
    assert TAG_REFERENCE not in _version("2")  # no drift reference for a version not promoted
    state, second = _retrain(root)  # the champion did not learn w1: the same rows are new again
    assert state == RetrainState.NOT_PROMOTED
    assert _learned(first) == _learned(second) == [("w1.csv", 0, 16)]
    assert _ledger("2") == _ledger("3")


def test_two_identical_retrains_learn_and_write_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = []
    for side in ("a", "b"):
        root = tmp_path / side
        (root / "new").mkdir(parents=True)
        monkeypatch.chdir(root)
        shutil.copy(template_db(), root / "mlflow.db")
        uri = f"sqlite:///{root / 'mlflow.db'}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.tracking.fluent._active_experiment_id = None
        monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        _setup(root, RandomForestRegressor(n_estimators=3, random_state=0))
        _write(root / "new" / "w1.csv", _rows(range(100, 120), 10.0), 1000.0)
        _write(root / "new" / "w2.csv", _rows(range(200, 210), 10.0), 2000.0)
        assert _retrain(root)[0] == RetrainState.PROMOTED
        v2 = _version("2")
        outputs.append((Path(v2[TAG_LEARNED]).read_bytes(), Path(v2[TAG_REFERENCE]).read_bytes(),
                        _trees(mlflow.sklearn.load_model(f"models:/{REG}/2"))))
    mlflow.set_tracking_uri(None)
    assert outputs[0][0] == outputs[1][0]  # ledgers
    assert outputs[0][1] == outputs[1][1]  # drift references
    assert outputs[0][2] == outputs[1][2]  # models: the same trees


def _trees(forest: RandomForestRegressor) -> list[bytes]:
    """Each tree's nodes and values, field by field (a pickle also holds the node array's
    uninitialised padding bytes, which differ between two equal trees)."""
    out = []
    for est in forest.estimators_:
        state = est.tree_.__getstate__()
        nodes = state["nodes"]
        out += [np.ascontiguousarray(nodes[f]).tobytes() for f in nodes.dtype.names] + [state["values"].tobytes()]
    return out


def test_a_full_refit_learns_the_champions_reference_plus_the_new_rows(root: Path) -> None:
    _setup(root, LinearRegression(), retrain='memory = "all"\n')  # no partial_fit, no warm_start: refit
    policy = root / "finops.toml"
    policy.write_text(policy.read_text().replace("refit_max_rows = 0", "refit_max_rows = 100"))
    _write(root / "new" / "w1.csv", _rows(range(100, 120), 10.0), 1000.0)
    state, tags = _retrain(root)
    # judged on its 4 held-out rows, then, having won and being small (40 + 20 <= 100), fitted
    # once more with them: all 20 learned
    assert state == RetrainState.PROMOTED and tags["finops.update_path"] == "refit"
    assert tags["learned.json"]["update"][0]["rows_learned"] == 20
    assert _reference_ids("2") == [*range(40), *range(100, 120)]
    assert "finops.memory" not in tags  # memory = "all": the new rows alone are never tried
    _write(root / "new" / "w2.csv", _rows(range(200, 220), 10.0), 2000.0)
    state, tags = _retrain(root)
    assert state == RetrainState.PROMOTED and tags["finops.update_path"] == "refit"
    assert _learned(tags) == [("w2.csv", 0, 20)]
    assert _reference_ids("3") == [*range(40), *range(100, 120), *range(200, 220)]
    assert [(f.name, f.learned) for f in _ledger("3").files] == [("ref.csv", 40), ("w1.csv", 20), ("w2.csv", 20)]
    # the score at promotion is the validated fit's, on the 4 rows it had not learned
    run = MlflowClient().get_run(_version("3")["finops.retrain_run_id"])
    assert run.data.metrics["retrain/rows_holdout"] == 4
    assert _version("3")["finops.rmse"] == f"{run.data.metrics['eval/challenger_rmse']:.6f}"


def test_features_are_learned_in_the_champions_order(root: Path) -> None:
    ref = _rows(range(40), 0.0).assign(b=1.0)[["id", "b", "x", "y"]]
    _setup(root, RandomForestRegressor(n_estimators=3, random_state=0), ref=ref, model='features = ["x", "b"]\n')
    _write(root / "new" / "w1.csv", _rows(range(100, 120), 10.0).assign(b=2.0, note="free text"), 1000.0)
    state, _ = _retrain(root)
    assert state == RetrainState.PROMOTED
    assert list(mlflow.sklearn.load_model(f"models:/{REG}/2").feature_names_in_) == ["b", "x"]


@pytest.mark.parametrize(
    "model, reason",
    [
        ("", "new data has no feature column 'x'"),
        ('features = ["x", "z"]\n', "new data has no feature column 'x', 'z'"),
    ],
)
def test_a_missing_feature_column_fails_naming_it(root: Path, model: str, reason: str) -> None:
    _setup(root, RandomForestRegressor(n_estimators=3, random_state=0), model=model)
    _write(root / "new" / "w1.csv", _rows(range(100, 120), 10.0).drop(columns=["x"]), 1000.0)
    state, tags = _retrain(root)
    assert state == RetrainState.FAILED and tags["finops.reason"] == reason
    assert len(MlflowClient().search_model_versions(f"name = '{REG}'")) == 1  # nothing registered


def test_an_unreadable_ledger_fails_rather_than_learn_everything_again(root: Path) -> None:
    _setup(root, RandomForestRegressor(n_estimators=3, random_state=0))
    _write(root / "new" / "w1.csv", _rows(range(100, 120), 10.0), 1000.0)
    MlflowClient().set_model_version_tag(REG, "1", TAG_LEARNED, str(root / "gone.learned.json"))
    state, tags = _retrain(root)
    assert state == RetrainState.FAILED and "gone.learned.json" in tags["finops.reason"]


def test_nothing_new_once_every_row_is_learned(root: Path) -> None:
    _setup(root, RandomForestRegressor(n_estimators=3, random_state=0))
    (root / "new" / "ref-copy.csv").write_bytes((root / "ref.csv").read_bytes())  # the reference again
    state, tags = _retrain(root)
    assert state == RetrainState.NO_NEW_DATA and "has learned every row" in tags["finops.reason"]


def test_a_long_lived_process_keeps_the_registered_challenger_as_the_next_champion(root: Path) -> None:
    """The warm actor's saving: the promoted challenger is not loaded back from the store, and a skops
    challenger trusts its champion's types without a second dump to list them."""
    from mlflow_finops.retrain import registry

    ref = _rows(range(40), 0.0)
    (root / "finops.toml").write_text(
        f'[models.m]\nreference = "ref.csv"\ncurrent = "new"\ntarget = "y"\nregistered_model = "{REG}"\n'
        'drop = ["id"]\n[models.m.retrain]\nmetric = "rmse"\nrefit_max_rows = 0\nwarm_start_step = 2\nwarm_start_steps = 1\n'
    )
    _write(root / "ref.csv", ref, 100.0)
    champion = RandomForestRegressor(n_estimators=3, random_state=0).fit(ref[["x"]], ref["y"])
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(champion, name="model", registered_model_name=REG,
                                        skops_trusted_types=["sklearn.tree._tree.Tree"],
                                        pip_requirements=["scikit-learn"])
    MlflowClient().set_registered_model_alias(REG, "champion", str(info.registered_model_version))
    _write(root / "new" / "w1.csv", _rows(range(100, 120), 10.0), 1000.0)
    state, _ = _retrain(root)
    assert state == RetrainState.PROMOTED and _champion() == "2"
    v2 = MlflowClient().get_model_version(REG, "2")
    remembered = registry.load_version(v2)
    assert len(remembered.estimators_) == 5  # the challenger object itself: 3 trees + 2
    assert registry.load_version(v2) is remembered  # no second load
    flavor = mlflow.models.get_model_info(f"models:/{REG}/2").flavors["sklearn"]
    assert flavor["serialization_format"] == "skops"
    assert flavor["skops_trusted_types"] == ["sklearn.tree._tree.Tree"]  # the champion's, reused
    loaded = mlflow.sklearn.load_model(f"models:/{REG}/2")  # and the store's copy loads with them
    assert np.allclose(loaded.predict(ref[["x"]]), remembered.predict(ref[["x"]]))


@pytest.mark.parametrize("new_classes", [[0, 1], [0, 1, 2, 3]])
def test_a_warm_start_that_would_change_the_class_set_refits(root: Path, new_classes: list[int]) -> None:
    """A forest's added trees must know every class of the old ones: fewer or more classes in the new
    rows is a full refit (said in finops.update_why), never a failed retrain."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)

    def rows(ids: range, classes: list[int]) -> pd.DataFrame:
        y = rng.choice(classes, len(ids))
        return pd.DataFrame({"id": list(ids), "x": y + rng.normal(0, 0.1, len(ids)), "y": y})

    (root / "finops.toml").write_text(
        f'[models.m]\nreference = "ref.csv"\ncurrent = "new"\ntarget = "y"\nregistered_model = "{REG}"\n'
        'drop = ["id"]\n[models.m.retrain]\nmetric = "accuracy"\nrefit_max_rows = 0\nwarm_start_step = 2\nwarm_start_steps = 1\n'
    )
    ref = rows(range(60), [0, 1, 2])
    _write(root / "ref.csv", ref, 100.0)
    champion = RandomForestClassifier(n_estimators=3, random_state=0).fit(ref[["x"]], ref["y"])
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(champion, name="model", registered_model_name=REG,
                                        serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
    MlflowClient().set_registered_model_alias(REG, "champion", str(info.registered_model_version))
    _write(root / "new" / "w1.csv", rows(range(100, 160), new_classes), 1000.0)
    state, tags = _retrain(root)
    assert state in (RetrainState.PROMOTED, RetrainState.NOT_PROMOTED), tags.get("finops.reason")
    assert tags["finops.update_path"] == "refit"
    assert "cannot change the class set" in tags["finops.update_why"]


def test_auto_refits_while_what_was_learned_and_the_new_rows_are_few(root: Path) -> None:
    _setup(root, RandomForestRegressor(n_estimators=3, random_state=0),  # auto would warm-start it
           retrain='memory = "all"\n')
    policy = root / "finops.toml"
    policy.write_text(policy.read_text().replace("refit_max_rows = 0", "refit_max_rows = 60"))
    _write(root / "new" / "w1.csv", _rows(range(100, 120), 10.0), 1000.0)
    state, tags = _retrain(root)
    # 40 learned + 16 new = 56 <= 60: a refit on everything (the held-out rows too, once it won),
    # which becomes the drift reference
    assert state == RetrainState.PROMOTED and tags["finops.update_path"] == "refit"
    assert "40 learned + 16 new rows <= refit_max_rows=60" in tags["finops.update_why"]
    assert _reference_ids("2") == [*range(40), *range(100, 120)]
    assert mlflow.sklearn.load_model(f"models:/{REG}/2").n_estimators == 3  # from scratch, not grown
    # 60 learned + 16 new = 76 > 60: the update it allows, on the new rows only, held-out ones kept
    _write(root / "new" / "w2.csv", _rows(range(200, 220), 10.0), 2000.0)
    state, tags = _retrain(root)
    assert state == RetrainState.PROMOTED and tags["finops.update_path"] == "warm_start"
    assert "finops.update_why" not in tags
    assert _reference_ids("3") == list(range(200, 216))
    assert mlflow.sklearn.load_model(f"models:/{REG}/3").n_estimators == 5


def test_a_winning_refit_of_more_than_refit_max_rows_keeps_its_held_out_rows_for_next_time(root: Path) -> None:
    _setup(root, LinearRegression(), retrain='memory = "all"\n')  # refit_max_rows = 0: every refit is "big"
    _write(root / "new" / "w1.csv", _rows(range(100, 120), 10.0), 1000.0)
    state, tags = _retrain(root)
    assert state == RetrainState.PROMOTED and tags["finops.update_path"] == "refit"
    assert _learned(tags) == [("w1.csv", 0, 16)]  # fitted once: the 4 held-out rows wait
    assert _reference_ids("2") == [*range(40), *range(100, 116)]


def test_adaptive_memory_forgets_what_the_champion_learned_when_the_new_rows_alone_predict_better(
        root: Path) -> None:
    _setup(root, LinearRegression())  # refit; memory = "adaptive" by default
    policy = root / "finops.toml"
    policy.write_text(policy.read_text().replace("refit_max_rows = 0", "refit_max_rows = 1000"))
    # the concept moved (labels +10): a line through the old rows too predicts the new ones worse
    _write(root / "new" / "w1.csv", _rows(range(100, 250), 10.0), 1000.0)
    state, tags = _retrain(root)
    assert state == RetrainState.PROMOTED
    assert tags["finops.memory"].startswith("new rows only: rmse ")
    assert "with the 120 new rows alone" in tags["finops.memory"] and "40 rows learned before" in tags["finops.memory"]
    assert _reference_ids("2") == list(range(100, 250))  # the drift reference: what it learned, the old rows not
    assert tags["learned.json"]["forgot_rows_learned_before"] == 40
    # the ledger still holds the reference: forgotten rows are never learned again
    assert [(f.name, f.learned) for f in _ledger("2").files] == [("ref.csv", 40), ("w1.csv", 150)]
    # the same concept again: the rows learned before help as much, so they are kept (a tie keeps them)
    _write(root / "new" / "w2.csv", _rows(range(300, 450), 10.0), 2000.0)
    state, tags = _retrain(root)
    assert tags["finops.memory"].startswith("all: "), tags["finops.memory"]
    assert "forgot_rows_learned_before" not in tags["learned.json"]
    if state == RetrainState.PROMOTED:
        assert _reference_ids(_champion()) == [*range(100, 250), *range(300, 450)]
    assert [f.name for f in _ledger(tags["finops.model_version"]).files] == ["ref.csv", "w1.csv", "w2.csv"]


def test_adaptive_memory_is_not_tried_on_few_held_out_rows(root: Path) -> None:
    _setup(root, LinearRegression())
    policy = root / "finops.toml"
    policy.write_text(policy.read_text().replace("refit_max_rows = 0", "refit_max_rows = 1000"))
    _write(root / "new" / "w1.csv", _rows(range(100, 245), 10.0), 1000.0)  # 29 held out: below 30
    state, tags = _retrain(root)
    assert state == RetrainState.PROMOTED and "finops.memory" not in tags
    assert _reference_ids("2") == [*range(40), *range(100, 245)]


def test_adaptive_memory_keeps_everything_on_a_tie(root: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    def rows(ids: range) -> pd.DataFrame:
        x = np.cos(np.array(ids, dtype=float))  # both signs
        return pd.DataFrame({"id": list(ids), "x": x, "y": (x > 0).astype(int)})

    _setup(root, LogisticRegression(), ref=rows(range(40)))
    policy = root / "finops.toml"
    policy.write_text(policy.read_text().replace("refit_max_rows = 0", "refit_max_rows = 1000")
                      .replace('metric = "rmse"', 'metric = "accuracy"'))
    _write(root / "new" / "w1.csv", rows(range(100, 250)), 1000.0)  # the same concept: both fits are perfect
    state, tags = _retrain(root)
    assert tags["finops.memory"].startswith("all: accuracy 1.0000 on the held-out rows"), tags["finops.memory"]
    assert "vs 1.0000 with the 40 rows learned before" in tags["finops.memory"]
