"""The ledger against real data files on disk (no store): copied, renamed, appended to, half-learned.

What a retrain reads is :func:`~mlflow_finops.retrain.job.new_data` (files hashed by content,
in data-file order) and what it records is :func:`~mlflow_finops.retrain.ledger.learn`; these
tests walk several retrains' worth of both, so a rule broken in either shows as rows learned
twice or never.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mlflow_finops.retrain.job import file_sha256, new_data
from mlflow_finops.retrain.ledger import FileRecord, Ledger, learn


def _write(path: Path, ids: range, mtime: float) -> Path:
    pd.DataFrame({"id": list(ids), "x": [i * 0.5 for i in ids]}).to_csv(path, index=False)
    os.utime(path, (mtime, mtime))
    return path


def _retrain(folder: Path, ledger: Ledger, hold_out: int = 0) -> tuple[Ledger, list[int]]:
    """What one retrain learns: every new row but the newest ``hold_out``; the ledger after, and the ids learned."""
    new = new_data(str(folder), ledger)
    n_train = max(len(new.frame) - hold_out, 0)
    after, taken = learn(ledger, new.pieces, n_train)
    assert sum(taken) == n_train and after.rows_learned == ledger.rows_learned + n_train
    return after, new.frame["id"].tolist()[:n_train] if len(new.frame) else []


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "new").mkdir()
    return tmp_path / "new"


def test_a_copied_or_renamed_file_is_not_learned_again(folder: Path) -> None:
    w1 = _write(folder / "w1.csv", range(0, 10), 1000.0)
    ledger, ids = _retrain(folder, Ledger())
    assert ids == list(range(10))
    learned = FileRecord(file_sha256(w1), w1.stat().st_size, 10, 10, "w1.csv")
    assert ledger.files == (learned,)
    shutil.copy(w1, folder / "w1-copy.csv")
    w1.rename(folder / "w1-renamed.csv")
    os.utime(folder / "w1-renamed.csv", (9000.0, 9000.0))  # touched too: content decides, not time
    assert new_data(str(folder), ledger).pieces == ()
    assert _retrain(folder, ledger) == (ledger, [])
    assert ledger.get(file_sha256(folder / "w1-copy.csv")) == learned  # known by content, whatever its name


def test_a_copy_of_a_new_file_counts_once_at_its_first_place(folder: Path) -> None:
    _write(folder / "a.csv", range(0, 4), 1000.0)
    b = _write(folder / "b.csv", range(100, 106), 2000.0)
    shutil.copy(b, folder / "b-copy.csv")
    os.utime(folder / "b-copy.csv", (1500.0, 1500.0))  # older than b: the copy's name is the one seen first
    new = new_data(str(folder), Ledger())
    assert [(p.name, p.start, p.rows) for p in new.pieces] == [("a.csv", 0, 4), ("b-copy.csv", 0, 6)]
    assert new.frame["id"].tolist() == [*range(0, 4), *range(100, 106)]  # b's rows once


def test_a_file_appended_to_is_a_new_file_and_the_old_record_stays(folder: Path) -> None:
    w1 = _write(folder / "w1.csv", range(0, 6), 1000.0)
    ledger, _ = _retrain(folder, Ledger())
    old = ledger.files[0]
    with w1.open("a") as f:
        f.write("6,3.0\n7,3.5\n")
    new = new_data(str(folder), ledger)
    # another content: all 8 rows are new (a file's rows are known by its hash, never by its name)
    assert [(p.name, p.start, p.rows, p.sha256) for p in new.pieces] == [("w1.csv", 0, 8, file_sha256(w1))]
    after, ids = _retrain(folder, ledger)
    assert ids == list(range(8))
    assert after.files == (old, FileRecord(file_sha256(w1), w1.stat().st_size, 8, 8, "w1.csv"))
    assert after.get(old.sha256) == old and after.rows_learned == 6 + 8


def test_a_half_learned_file_resumes_after_its_learned_prefix_until_complete(folder: Path) -> None:
    w1 = _write(folder / "w1.csv", range(0, 10), 1000.0)
    digest = file_sha256(w1)
    ledger, ids = _retrain(folder, Ledger(), hold_out=3)  # the newest 3 held out to judge the challenger
    assert ids == list(range(7))
    assert ledger.get(digest) == FileRecord(digest, w1.stat().st_size, 10, 7, "w1.csv")
    assert not ledger.get(digest).complete

    w2 = _write(folder / "w2.csv", range(100, 105), 2000.0)
    new = new_data(str(folder), ledger)
    assert [(p.name, p.start, p.new_rows) for p in new.pieces] == [("w1.csv", 7, 3), ("w2.csv", 0, 5)]
    assert new.frame["id"].tolist() == [7, 8, 9, *range(100, 105)]  # the held-out rows first, then w2's

    ledger, ids = _retrain(folder, ledger, hold_out=4)  # 3 of w1 + 1 of w2 learned; w2's newest 4 held out
    assert ids == [7, 8, 9, 100]
    assert ledger.get(digest).complete and ledger.get(file_sha256(w2)).learned == 1
    ledger, ids = _retrain(folder, ledger)
    assert ids == [101, 102, 103, 104]
    assert new_data(str(folder), ledger).pieces == ()  # every row learned once
    assert ledger.rows_learned == 15 and [f.name for f in ledger.files] == ["w1.csv", "w2.csv"]


def test_the_ledger_of_a_half_learned_folder_survives_its_json(folder: Path) -> None:
    _write(folder / "w1.csv", range(0, 10), 1000.0)
    ledger, _ = _retrain(folder, Ledger(), hold_out=2)
    again = Ledger.from_json(ledger.to_json(model="m", version="2"))
    assert again == ledger
    assert [(p.start, p.new_rows) for p in new_data(str(folder), again).pieces] == [(8, 2)]
