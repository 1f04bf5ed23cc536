"""The model registry's side of a retrain: versions logged, loaded, aliased and tagged.

Every write to the registry the loop makes is here, in a function that says it writes:
the first champion (:func:`register_champion`), a retrain's challenger
(:func:`register_challenger`), its promotion (:func:`promote`) and its ledger
(:func:`write_ledger`). Models are logged with skops trusting exactly the types they
hold (MLflow 3's default format refuses to load a model without that list), or in the
format the champion was logged in.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from ..names import TAG_LEARNED, TAG_REFERENCE, tag

log = logging.getLogger(__name__)

__all__ = [
    "CHAMPION",
    "CHALLENGER",
    "skops_types",
    "register_champion",
    "register_challenger",
    "load_version",
    "ledger_path",
    "write_ledger",
    "promote",
]

CHAMPION, CHALLENGER = "champion", "challenger"  # registry aliases


def skops_types(model: Any) -> dict[str, Any]:
    """``log_model`` options trusting the types ``model`` holds when skops loads it (one skops
    dump); {} without skops (MLflow's default format then)."""
    try:
        import skops.io as sio

        return {"skops_trusted_types": sio.get_untrusted_types(data=sio.dumps(model))}
    except Exception:  # no skops here: MLflow's default format
        return {}


def register_champion(model: Any, registered: str, *, metric: str | None = None, score: float | None = None,
                      client: MlflowClient | None = None) -> str:
    """Log ``model`` (in the active run, if any), register it under ``registered`` and move
    ``@champion`` to it; its version.

    ``metric`` and ``score``: its validation score, tagged ``finops.<metric>`` on the version,
    as a retrain tags the challenger it promotes with its held-out score; the drift gate
    measures the champion's loss on new data from there.
    """
    client = client or MlflowClient()
    info = mlflow.sklearn.log_model(model, name="model", registered_model_name=registered, **skops_types(model))
    version = str(info.registered_model_version)
    client.set_registered_model_alias(registered, CHAMPION, version)
    if metric is not None and score is not None:
        client.set_model_version_tag(registered, version, tag(metric), f"{score:.6f}")
    return version


def _serialization(model: Any, champion_uri: str) -> dict[str, Any]:
    """How to log the challenger: in the champion's own format (skops trusting the champion's
    types, or the champion's pickle flavour), with the champion's pip requirements
    (inferring them again costs seconds of CPU per retrain)."""
    out: dict[str, Any] = {}
    flavor: dict[str, Any] = {}
    try:
        flavor = mlflow.models.get_model_info(champion_uri).flavors.get("sklearn", {})
    except Exception as exc:
        log.info("champion's serialization format unknown (%s); MLflow's default", exc)
    fmt = flavor.get("serialization_format")
    if fmt and fmt != "skops":
        out["serialization_format"] = fmt  # and skops, which imports all of scikit-learn, is not needed
    elif flavor.get("skops_trusted_types") is not None:
        # an update of the champion is built of the champion's types: no extra skops dump to list them
        out["skops_trusted_types"] = list(flavor["skops_trusted_types"])
    else:
        out.update(skops_types(model))
    try:
        out["pip_requirements"] = mlflow.artifacts.download_artifacts(f"{champion_uri}/requirements.txt")
    except Exception as exc:
        log.info("champion's requirements not reused (%s); MLflow infers them", exc)
    return out


_LOADED: "OrderedDict[tuple[str, str, str, int], Any]" = OrderedDict()
_KEEP_LOADED = 2


def _key(version: Any) -> tuple[str, str, str, int]:
    return (mlflow.get_tracking_uri(), version.name, str(version.version), int(version.creation_timestamp or 0))


def _remember(version: Any, model: Any) -> None:
    _LOADED[_key(version)] = model
    _LOADED.move_to_end(_key(version))
    while len(_LOADED) > _KEEP_LOADED:
        _LOADED.popitem(last=False)


def load_version(version: Any) -> Any:
    """The model of a registry version (a ``ModelVersion``).

    A long-lived process (the warm retrain actor) keeps the last two in memory:
    the next retrain's champion is most often the challenger this one just
    registered, and loading it again costs a full deserialization. Updates
    never change a loaded model (they work on a copy).
    """
    model = _LOADED.get(_key(version))
    if model is None:
        model = mlflow.sklearn.load_model(f"models:/{version.name}/{version.version}")
    _remember(version, model)
    return model


def register_challenger(client: MlflowClient, challenger: Any, name: str, tags: dict[str, str]) -> str:
    """Log and register the challenger (alias ``@challenger``) in the champion's format, with
    ``tags`` on its version; its version."""
    options = _serialization(challenger, f"models:/{name}@{CHAMPION}")
    try:
        info = mlflow.sklearn.log_model(challenger, name="model", registered_model_name=name, **options)
    except mlflow.exceptions.MlflowException as exc:
        if "untrusted types" not in str(exc) or "skops_trusted_types" not in options:
            raise
        log.info("the challenger holds types its champion did not: listing them")  # e.g. a refit's new steps
        info = mlflow.sklearn.log_model(challenger, name="model", registered_model_name=name,
                                        **{**options, **skops_types(challenger)})
    version = str(info.registered_model_version)
    _remember(client.get_model_version(name, version), challenger)
    client.set_registered_model_alias(name, CHALLENGER, version)
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    return version


def ledger_path(base: str, name: str, version: str) -> str:
    """Where a version's ledger lives: beside the references, on the file system retrains share."""
    return os.path.join(base, "references", f"{name}-v{version}.learned.json")


def write_ledger(client: MlflowClient, base: str, name: str, version: str, text: str) -> str:
    """Write a version's ledger (JSON ``text``) to :func:`ledger_path` and tag the version with it; the path."""
    where = ledger_path(base, name, version)
    os.makedirs(os.path.dirname(where), exist_ok=True)
    with open(where, "w", encoding="utf-8") as f:
        f.write(text)
    client.set_model_version_tag(name, version, TAG_LEARNED, where)
    return where


def promote(client: MlflowClient, name: str, version: str, learned: pd.DataFrame, base: str) -> str:
    """Make ``version`` the champion; the rows it learned become the drift gate's reference (its path)."""
    ref_dir = os.path.join(base, "references")
    os.makedirs(ref_dir, exist_ok=True)
    ref_path = os.path.join(ref_dir, f"{name}-v{version}.parquet")
    learned.reset_index(drop=True).to_parquet(ref_path)
    client.set_model_version_tag(name, version, TAG_REFERENCE, ref_path)
    client.set_registered_model_alias(name, CHAMPION, version)
    return ref_path
