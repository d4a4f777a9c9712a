"""`rounds.jsonl`, one line of metrics per finished round, safe under concurrent runs and interruptions.

Every change goes through an exclusive `fcntl` lock on `rounds.jsonl.lock` and rewrites the file atomically
([`trl_rankalign.sampling.jsonl.write_jsonl`]): [`record_round`] replaces the line of its round (two runs that finish
the same round leave one line, not two), [`forget_rounds_from`] drops the lines of a round and the later ones (they are
being redone). A line cut short by an interruption is skipped when read and dropped at the next write, so it never
stops a rerun.
"""

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ..sampling.jsonl import read_jsonl, write_jsonl


__all__ = ["ROUNDS_FILE", "forget_rounds_from", "locked", "read_rounds", "record_round"]

ROUNDS_FILE = "rounds.jsonl"


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock` (created if missing) for the duration of the block."""
    lock_path = Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _valid(row: dict) -> bool:
    return isinstance(row.get("round"), int)


def read_rounds(output_dir: str | os.PathLike) -> list[dict]:
    """The recorded rounds, one per round index (the last line of a round wins), in round order; damaged lines are
    skipped."""
    by_round = {row["round"]: row for row in read_jsonl(Path(output_dir) / ROUNDS_FILE) if _valid(row)}
    return [by_round[index] for index in sorted(by_round)]


def record_round(output_dir: str | os.PathLike, metrics: dict) -> None:
    """Write the line of round `metrics["round"]`, replacing any earlier line of that round, under the lock."""
    path = Path(output_dir) / ROUNDS_FILE
    with locked(path):
        rows = [row for row in read_rounds(output_dir) if row["round"] != metrics["round"]]
        write_jsonl(path, sorted([*rows, metrics], key=lambda row: row["round"]))


def forget_rounds_from(output_dir: str | os.PathLike, first: int) -> None:
    """Drop the lines of round `first` and later, under the lock (damaged lines go too)."""
    path = Path(output_dir) / ROUNDS_FILE
    if not path.exists():
        return
    with locked(path):
        write_jsonl(path, [row for row in read_rounds(output_dir) if row["round"] < first])
