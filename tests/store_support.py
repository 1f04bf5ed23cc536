"""A fresh SQLite MLflow store per test at the price of a file copy (imported by tests, not a conftest).

MLflow migrates a new SQLite database when it is first opened (seconds). The
migrated empty database is kept once per user and MLflow version under the
temp dir, so that every pytest process (``make mutation`` starts one per
mutant) copies it instead of migrating again. MLflow's SQL store and server
modules are imported here, at collection: mutmut forks each mutant's pytest
from a process that collected the tests, so none of them pays those seconds.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import mlflow
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (see the module doc)
import pytest
from mlflow.server import app as mlflow_app
from mlflow.server import handlers
from mlflow.tracking import MlflowClient
from werkzeug.serving import WSGIRequestHandler, make_server


def template_db() -> Path:
    """The migrated empty database, made on first use (atomically: concurrent makers are harmless)."""
    folder = Path(tempfile.gettempdir()) / f"mlflow-finops-tests-{os.geteuid()}"
    path = folder / f"empty-mlflow-{mlflow.__version__}.db"
    if not path.exists():
        folder.mkdir(mode=0o700, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=folder)) / "mlflow.db"
        MlflowClient(f"sqlite:///{scratch}").search_experiments()  # creates and migrates the schema
        scratch.replace(path)
        shutil.rmtree(scratch.parent, ignore_errors=True)
    return path


@pytest.fixture
def copied_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh SQLite tracking store, set as the tracking URI for this test (like ``sqlite_uri``)."""
    db = tmp_path / "mlflow.db"
    shutil.copy(template_db(), db)
    uri = f"sqlite:///{db}"
    monkeypatch.chdir(tmp_path)  # artifacts of new experiments land under tmp_path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@contextmanager
def serve_wsgi(app: Any, name: str) -> Iterator[str]:
    """``app`` on 127.0.0.1 in a thread of this process, quietly; yields its URL."""

    class Quiet(WSGIRequestHandler):
        def log_request(self, *args: object, **kwargs: object) -> None:
            pass

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def rest_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """MLflow's own tracking server app (the REST handlers ``mlflow server`` serves) on 127.0.0.1,
    in a thread of this process, over a copied SQLite store: an HTTP store in milliseconds."""
    root = tmp_path_factory.mktemp("rest-store")
    shutil.copy(template_db(), root / "mlflow.db")
    previous = handlers._tracking_store
    handlers._tracking_store = None  # the app keeps its store in a global: point it at this test's
    handlers._get_tracking_store(f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"))
    mlflow.set_tracking_uri(None)  # (which also set this process's tracking URI)
    try:
        with serve_wsgi(mlflow_app, "mlflow-rest-store") as url:
            yield url
    finally:
        handlers._tracking_store = previous


AUTH_USER, AUTH_PASSWORD = "finops-user", "s3cret"


@pytest.fixture(scope="module")
def auth_rest_store(rest_store: str) -> Iterator[str]:
    """The same store behind HTTP basic auth (as a proxy in front of ``mlflow server`` would put it):
    a request without ``AUTH_USER:AUTH_PASSWORD`` gets 401. Yields the URL without credentials."""
    expected = "Basic " + base64.b64encode(f"{AUTH_USER}:{AUTH_PASSWORD}".encode()).decode()

    def guarded(environ: dict, start_response: Any) -> Any:
        if environ.get("HTTP_AUTHORIZATION") != expected:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="mlflow"'),
                                                ("Content-Length", "0")])
            return [b""]
        return mlflow_app(environ, start_response)

    with serve_wsgi(guarded, "mlflow-auth-store") as url:
        yield url
