"""What a model version has learned, row by row: the retrain's data accounting (pure).

A *ledger* lists, per data file, its content hash (sha256), size, row count and
how many of its leading rows the version learned. Files are known by content,
never by name or modification time: renaming or touching a learned file changes
nothing, and a file whose content changed is a new file (all its rows are new).

Each retrain starts from the champion's ledger and learns only what it lacks:
files it has never seen, and for a file it has partly learned, the rows after
its learned prefix (:func:`pending`). The newest of those rows are held out to
judge the challenger and are *not* learned, so the next retrain learns them
(:func:`learn`). The challenger's ledger is the champion's plus what it learned;
a challenger that is not promoted leaves the champion's ledger as it was. A
challenger refitted on the new rows alone (``[retrain] memory = "adaptive"``) forgot
what its champion learned; its ledger still lists those rows, as learned by its
lineage, so no later retrain learns them again (its JSON says how many it forgot,
and its drift reference holds only the rows it learned).

A champion with no ledger (a version trained by a person, e.g. v1) learned the
policy's ``[models.NAME].reference`` file, all of it, and nothing else: every
file of ``current`` with another content hash is new (:meth:`Ledger.of_reference`).

The JSON form (:meth:`Ledger.to_json`) is written beside the version's drift
reference and logged as the retrain run's ``learned.json``; it holds no paths or
clocks, so two identical retrains write identical ledgers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Sequence

__all__ = ["FORMAT", "FileRecord", "Seen", "Piece", "Ledger", "LedgerError", "pending", "learn"]

FORMAT = 1  # the JSON layout's version


class LedgerError(ValueError):
    """A ledger that cannot be read (not JSON, another format, a field missing or wrong)."""


@dataclass(frozen=True)
class FileRecord:
    """One data file as a ledger knows it; ``name`` is where it was last seen (for people)."""

    sha256: str
    size: int
    rows: int
    learned: int  # how many of its leading rows were learned
    name: str = ""

    @property
    def complete(self) -> bool:
        return self.learned >= self.rows


@dataclass(frozen=True)
class Seen:
    """A data file found now: its hash, size and name (its rows are read only when needed)."""

    sha256: str
    size: int
    name: str


@dataclass(frozen=True)
class Piece:
    """The not-yet-learned rows ``start..rows`` of one file, in the order the job reads them."""

    sha256: str
    size: int
    name: str
    rows: int
    start: int

    @property
    def new_rows(self) -> int:
        return self.rows - self.start


@dataclass(frozen=True)
class Ledger:
    """Files a version learned from, in the order it first learned them."""

    files: tuple[FileRecord, ...] = ()

    @classmethod
    def of_reference(cls, sha256: str, size: int, rows: int, name: str) -> "Ledger":
        """A champion without a ledger: it learned the policy's reference file, whole."""
        return cls((FileRecord(sha256, size, rows, rows, name),))

    @cached_property
    def _by_hash(self) -> dict[str, int]:
        return {f.sha256: i for i, f in enumerate(self.files)}

    def get(self, sha256: str) -> FileRecord | None:
        i = self._by_hash.get(sha256)
        return None if i is None else self.files[i]

    @property
    def rows_learned(self) -> int:
        return sum(f.learned for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "files": [asdict(f) for f in self.files]}

    def to_json(self, **about: Any) -> str:
        """The ledger as JSON; ``about`` adds fields for people (model, version, what this update learned)."""
        return json.dumps({**about, **self.to_dict()}, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Ledger":
        """The ledger :meth:`to_json` wrote; :class:`LedgerError` saying what is wrong otherwise."""
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise LedgerError(f"not JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise LedgerError(f"not a ledger of format {FORMAT}")
        try:
            files = tuple(
                FileRecord(str(f["sha256"]), int(f["size"]), int(f["rows"]), int(f["learned"]), str(f.get("name", "")))
                for f in doc["files"]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerError(f"a file entry is incomplete ({type(exc).__name__}: {exc})") from None
        if any(not 0 <= f.learned <= f.rows for f in files):
            raise LedgerError("a file entry has learned rows outside 0..rows")
        return cls(files)


def pending(ledger: Ledger, seen: Sequence[Seen]) -> list[tuple[Seen, int]]:
    """The files of ``seen`` (in their order) with rows ``ledger`` has not learned, each with
    the first such row. A content seen twice (a copy) counts once, at its first place."""
    out: list[tuple[Seen, int]] = []
    done: set[str] = set()
    for s in seen:
        if s.sha256 in done:
            continue
        done.add(s.sha256)
        known = ledger.get(s.sha256)
        if known is None:
            out.append((s, 0))
        elif not known.complete:
            out.append((s, known.learned))
    return out


def learn(ledger: Ledger, pieces: Sequence[Piece], n_train: int) -> tuple[Ledger, list[int]]:
    """The ledger after learning the first ``n_train`` of the pieces' rows (in order; the rest,
    the newest, held out), and how many rows of each piece that is.

    Each piece's rows follow its file's learned prefix, so what is learned stays a prefix.
    A file none of whose rows were learned is not added.
    """
    if not 0 <= n_train <= sum(p.new_rows for p in pieces):
        raise ValueError(f"cannot learn {n_train} rows of {sum(p.new_rows for p in pieces)} new ones")
    files = list(ledger.files)
    where = dict(ledger._by_hash)
    taken: list[int] = []
    left = n_train
    for p in pieces:
        take = min(left, p.new_rows)
        left -= take
        taken.append(take)
        if not take:
            continue
        record = FileRecord(p.sha256, p.size, p.rows, p.start + take, p.name)
        if p.sha256 in where:
            files[where[p.sha256]] = record
        else:
            where[p.sha256] = len(files)
            files.append(record)
    return Ledger(tuple(files)), taken
