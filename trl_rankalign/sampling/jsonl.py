"""JSONL caches that survive interruptions: whole-line appends, damaged lines dropped and redone.

Every resumable file of this package (answers, samples, candidates, judgments, verdicts) is a JSONL file written only by
[`append_jsonl`] (one `write` of whole lines, flushed and fsynced) and read by [`read_jsonl`]. An interrupted write can
still leave a partial last line; [`read_jsonl`] skips it (and any other line that is not a JSON object, so one bad
line never hides the rows after it), and [`repair_jsonl`] rewrites the file without it before the next append, so the
next row starts on a fresh line instead of being glued to the partial one. Rewrites go through a temporary file and
`os.replace`: a crash leaves either the old file or the new one.
"""

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path


__all__ = ["append_jsonl", "output_folder", "read_jsonl", "repair_jsonl", "write_jsonl"]

logger = logging.getLogger(__name__)


def _parse(path: str | os.PathLike) -> tuple[list[dict], int, bool]:
    """`(rows, damaged lines, ends with a newline)` of a JSONL file (an absent file has no rows)."""
    if not os.path.exists(path):
        return [], 0, True
    rows, damaged = [], 0
    with open(path, "rb") as f:
        data = f.read()
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            damaged += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            damaged += 1
    return rows, damaged, not data or data.endswith(b"\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON-object rows of a JSONL file, in file order; lines that are not JSON objects (a write cut short by an
    interruption) are skipped with a warning, never the rows after them. An absent file has no rows."""
    rows, damaged, _ = _parse(path)
    if damaged:
        logger.warning("%s: skipped %d damaged line(s) (an interrupted write); they will be redone.", path, damaged)
    return rows


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Replace `path` with `rows`, atomically (temporary file, fsync, `os.replace`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append `rows` as whole lines in one write (flushed and fsynced), so concurrent appenders never interleave and
    an interruption damages at most the last line."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if not text:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def repair_jsonl(path: str | os.PathLike, keep: Callable[[dict], bool] | None = None) -> list[dict]:
    """Make `path` safe to append to and return its rows.

    Damaged lines are dropped, a last line lacking its newline gets one, and rows that `keep` rejects are dropped;
    the file is rewritten (atomically) only when something changes. Returns the rows kept, in file order.
    """
    rows, damaged, ends_with_newline = _parse(path)
    kept = [row for row in rows if keep is None or keep(row)]
    if damaged or len(kept) != len(rows) or not ends_with_newline:
        if damaged:
            logger.warning(
                "%s: dropped %d damaged line(s) (an interrupted write); they will be redone.", path, damaged
            )
        write_jsonl(path, kept)
    return kept


def output_folder(path: str | os.PathLike, what: str = "output_dir") -> Path:
    """`path` as a folder, created if needed; a `ValueError` naming it when it (or a folder above it) is a file or
    cannot be created, instead of a `FileExistsError` traceback from `mkdir`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a file, not a folder: pass a folder (new or from an earlier run).")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a parent is a file, no permission, ...
        raise ValueError(f"Cannot create {what} {str(path)!r}: {error.strerror or error}.") from None
    return path
