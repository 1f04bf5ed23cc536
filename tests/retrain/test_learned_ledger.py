"""The ledger's rules on their own (pure): which rows are new, what learning the oldest of them records."""

from __future__ import annotations

import json

import pytest

from mlflow_finops.retrain.ledger import FileRecord, Ledger, LedgerError, Piece, Seen, learn, pending

A, B, C = "a" * 64, "b" * 64, "c" * 64


def test_pending_skips_what_was_learned_and_resumes_a_prefix() -> None:
    ledger = Ledger((FileRecord(A, 10, 5, 5, "a.csv"), FileRecord(B, 20, 8, 3, "b.csv")))
    seen = [Seen(A, 10, "a-renamed.csv"), Seen(C, 30, "c.csv"), Seen(B, 20, "b.csv"), Seen(C, 30, "c-copy.csv")]
    assert pending(ledger, seen) == [(Seen(C, 30, "c.csv"), 0), (Seen(B, 20, "b.csv"), 3)]
    assert pending(Ledger(), [Seen(A, 10, "a.csv")]) == [(Seen(A, 10, "a.csv"), 0)]


def test_learn_takes_the_oldest_rows_and_leaves_the_newest() -> None:
    ledger = Ledger((FileRecord(A, 10, 5, 5, "a.csv"), FileRecord(B, 20, 8, 3, "b.csv")))
    pieces = [Piece(B, 20, "b2.csv", 8, 3), Piece(C, 30, "c.csv", 6, 0), Piece("d" * 64, 5, "d.csv", 2, 0)]
    after, taken = learn(ledger, pieces, 7)  # 5 of b, 2 of c; c's other 4 and d held out
    assert taken == [5, 2, 0]
    assert after.files == (FileRecord(A, 10, 5, 5, "a.csv"), FileRecord(B, 20, 8, 8, "b2.csv"),
                           FileRecord(C, 30, 6, 2, "c.csv"))  # d, of which nothing was learned, is not added
    assert after.rows_learned == ledger.rows_learned + 7
    assert learn(ledger, pieces, 0) == (ledger, [0, 0, 0])
    with pytest.raises(ValueError):
        learn(ledger, pieces, 17)


def test_the_json_form_round_trips_and_holds_no_path_or_clock() -> None:
    ledger = Ledger.of_reference(A, 10, 5, "ref.csv")
    text = ledger.to_json(model="m", version="2")
    assert Ledger.from_json(text) == ledger and text == ledger.to_json(model="m", version="2")
    assert json.loads(text) == {"format": 1, "model": "m", "version": "2", "files": [
        {"sha256": A, "size": 10, "rows": 5, "learned": 5, "name": "ref.csv"}]}


@pytest.mark.parametrize(
    "text, error",
    [
        ("{", "not JSON"),
        ('{"format": 2, "files": []}', "not a ledger of format 1"),
        ('{"format": 1, "files": [{"sha256": "x"}]}', "incomplete"),
        ('{"format": 1, "files": [{"sha256": "x", "size": 1, "rows": 2, "learned": 3}]}', "outside 0..rows"),
    ],
)
def test_a_broken_ledger_is_refused_saying_why(text: str, error: str) -> None:
    with pytest.raises(LedgerError, match=error):
        Ledger.from_json(text)


def test_the_json_form_is_indented_and_sorted_for_people_and_diffs() -> None:
    text = Ledger((FileRecord(A, 10, 5, 0, "a.csv"),)).to_json(version="3")
    assert text == (
        '{\n "files": [\n  {\n   "learned": 0,\n   "name": "a.csv",\n   "rows": 5,\n   "sha256": "' + A + '",\n'
        '   "size": 10\n  }\n ],\n "format": 1,\n "version": "3"\n}\n'
    )
    # a file none of whose rows were learned yet reads back; a name is optional
    assert Ledger.from_json(text).files[0].learned == 0
    nameless = '{"format": 1, "files": [{"sha256": "x", "size": 1, "rows": 2, "learned": 1}]}'
    assert Ledger.from_json(nameless).files == (FileRecord("x", 1, 2, 1, ""),)


def test_a_broken_ledger_says_exactly_what_is_wrong() -> None:
    with pytest.raises(LedgerError, match=r"^a file entry is incomplete \(KeyError: 'size'\)$"):
        Ledger.from_json('{"format": 1, "files": [{"sha256": "x"}]}')
    with pytest.raises(LedgerError, match=r"^a file entry has learned rows outside 0\.\.rows$"):
        Ledger.from_json('{"format": 1, "files": [{"sha256": "x", "size": 1, "rows": 2, "learned": -1}]}')


def test_a_copy_counts_once_and_the_files_after_it_still_count() -> None:
    seen = [Seen(C, 30, "c.csv"), Seen(C, 30, "c-copy.csv"), Seen(B, 20, "b.csv")]
    assert pending(Ledger(), seen) == [(Seen(C, 30, "c.csv"), 0), (Seen(B, 20, "b.csv"), 0)]


def test_every_new_row_may_be_learned_but_not_one_more() -> None:
    pieces = [Piece(B, 20, "b.csv", 8, 3), Piece(C, 30, "c.csv", 6, 0)]
    after, taken = learn(Ledger(), pieces, 11)
    assert taken == [5, 6] and [f.learned for f in after.files] == [8, 6]  # b: its prefix of 3, then 5
    with pytest.raises(ValueError, match=r"^cannot learn 12 rows of 11 new ones$"):
        learn(Ledger(), pieces, 12)
    with pytest.raises(ValueError, match=r"^cannot learn -1 rows of 11 new ones$"):
        learn(Ledger(), pieces, -1)
