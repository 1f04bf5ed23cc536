"""Reading data files: every failure is one line naming the file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlflow_finops.frames import DataInputError, data_files, read_frame


def test_duplicate_parquet_columns_are_named_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "dup.parquet"
    pq.write_table(pa.table([pa.array([1, 2]), pa.array([3, 4]), pa.array([5, 6])], names=["a", "a", "b"]), path)
    with pytest.raises(DataInputError) as err:
        read_frame(path)
    assert str(err.value) == f"{path}: duplicate column name(s) 'a'"


@pytest.mark.parametrize("name, content, expected", [
    ("broken.parquet", b"not parquet at all", "cannot read it (ArrowInvalid:"),
    ("missing.csv", None, "file not found"),
    ("data.xlsx", b"x", "unsupported file type"),
])
def test_unreadable_files_are_one_line_naming_the_file(tmp_path: Path, name: str, content: bytes | None,
                                                       expected: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataInputError) as err:
        read_frame(path)
    message = str(err.value)
    assert message.startswith(str(path)) and expected in message
    assert "\n" not in message


def test_data_files_filters_by_suffix_and_orders_oldest_first(tmp_path: Path) -> None:
    import os

    for i, name in enumerate(["b.csv", "a.parquet", "notes.txt", "c.csv.gz"]):
        p = tmp_path / name
        if name.endswith(".parquet"):
            pd.DataFrame({"x": [1]}).to_parquet(p)
        else:
            p.write_text("x\n1\n")
        os.utime(p, ns=(10**18 + i, 10**18 + i))
    assert [f.name for f in data_files(tmp_path)] == ["b.csv", "a.parquet", "c.csv.gz"]
    assert [f.name for f in data_files(str(tmp_path / "*.csv"))] == ["b.csv"]


def test_parquet_reads_as_pandas_reads_it(tmp_path: Path) -> None:
    """The faster reader (a block per column, Arrow freed as it converts) gives pandas' own frame."""
    frames = [
        pd.DataFrame({"a": [1, 2, 3], "b": ["x", None, "z"], "c": [1.0, float("nan"), 2.0],
                      "t": pd.to_datetime(["2020-01-01", "2020-01-02", None]), "k": pd.Categorical(["u", "v", "u"])},
                     index=pd.Index([5, 6, 7], name="id")),
        pd.DataFrame({"a": [1, 2, 3]}, index=pd.RangeIndex(10, 13)),
        pd.DataFrame({"n": pd.array([1, None, 3], dtype="Int64"), "s": pd.array(["a", None, "c"], dtype="string")}),
    ]
    for i, frame in enumerate(frames):
        frame.attrs = {"source": f"frame {i}"}
        path = tmp_path / f"f{i}.parquet"
        frame.to_parquet(path)
        ours, theirs = read_frame(path), pd.read_parquet(path)
        pd.testing.assert_frame_equal(ours, theirs)
        assert ours.attrs == theirs.attrs == {"source": f"frame {i}"}
