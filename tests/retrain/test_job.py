"""The retrain job's own reading on real files: the new data a ledger lacks, content hashes, the
champion's reference (no Ray, no MLflow run; the update itself: ``test_update.py``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd

from mlflow_finops.policy import ModelPolicy
from mlflow_finops.retrain.job import file_sha256, new_data
from mlflow_finops.retrain.ledger import FileRecord, Ledger, Seen


def _write(path: Path, rows: int, mtime: float, first: int = 0) -> None:
    pd.DataFrame({"x": range(first, first + rows), "y": [i % 2 for i in range(rows)]}).to_csv(path, index=False)
    os.utime(path, (mtime, mtime))


def test_new_data_reads_the_rows_the_ledger_lacks_in_file_order(tmp_path: Path) -> None:
    _write(tmp_path / "b.csv", 2, 1000.0, first=10)
    _write(tmp_path / "a.csv", 3, 2000.0, first=20)
    _write(tmp_path / "old.csv", 5, 500.0)
    (tmp_path / "notes.txt").write_text("not data")
    os.utime(tmp_path / "notes.txt", (3000.0, 3000.0))
    new = new_data(str(tmp_path), Ledger())
    assert [p.name for p in new.pieces] == ["old.csv", "b.csv", "a.csv"]  # oldest first, the .txt left out
    assert new.frame["x"].tolist() == [0, 1, 2, 3, 4, 10, 11, 20, 21, 22]
    # old.csv learned whole, b.csv's first row: only what follows is new, whatever the names and times
    old, b = (Seen(file_sha256(tmp_path / f), (tmp_path / f).stat().st_size, f) for f in ("old.csv", "b.csv"))
    known = Ledger((FileRecord(old.sha256, old.size, 5, 5, "old.csv"), FileRecord(b.sha256, b.size, 2, 1, "b.csv")))
    (tmp_path / "b.csv").rename(tmp_path / "b-renamed.csv")
    os.utime(tmp_path / "old.csv", (4000.0, 4000.0))
    again = new_data(str(tmp_path / "*.csv"), known)
    assert [(p.name, p.start, p.rows) for p in again.pieces] == [("b-renamed.csv", 1, 2), ("a.csv", 0, 3)]
    assert again.frame["x"].tolist() == [11, 20, 21, 22]
    # a copy of a file is the same data: counted once; a file whose content changed is new
    (tmp_path / "a-copy.csv").write_bytes((tmp_path / "a.csv").read_bytes())
    _write(tmp_path / "old.csv", 6, 4000.0)
    third = new_data(str(tmp_path), known)
    assert [p.name for p in third.pieces] == ["b-renamed.csv", "a.csv", "old.csv"]
    assert len(third.frame) == 1 + 3 + 6
    assert new_data(str(tmp_path / "none-*.csv"), Ledger()).frame.empty


def test_file_sha256_is_the_content_hash(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert file_sha256(tmp_path / "f") == hashlib.sha256(b"abc").hexdigest()


def test_a_big_parquet_reference_is_not_read_to_learn_it_is_big(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from mlflow_finops.names import TAG_REFERENCE
    from mlflow_finops.retrain.job import _previous_reference

    path = tmp_path / "ref.parquet"
    pd.DataFrame({"x": range(50), "y": range(50)}).to_parquet(path)
    version = SimpleNamespace(tags={TAG_REFERENCE: str(path)})
    cfg = SimpleNamespace(model_policy=ModelPolicy(), path=lambda p: p)
    assert _previous_reference(cfg, version, at_most=49) is None  # the footer says 50
    assert len(_previous_reference(cfg, version, at_most=50)) == 50
    assert len(_previous_reference(cfg, version)) == 50
