"""Durable file I/O: append-only JSONL records and atomically replaced summaries.

Long jobs never lose work: per-sample records are appended and flushed one line at a time (a killed
run loses at most the line being written, which :func:`read_jsonl` tolerates only at the very end of a
file), and summaries are written to a temporary file in the same directory and renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from thinkctl.errors import DataFormatError


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def drop_partial_tail(path: str | os.PathLike[str]) -> bool:
    """Cut a trailing line that has no newline (left by a killed writer) so appends start clean.

    Returns True when something was cut.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return False
        f.truncate(data.rfind(b"\n") + 1)
    return True


def append_jsonl(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> int:
    """Append records as JSON lines, flushing and fsyncing so a crash cannot leave them half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n


def iter_jsonl(path: str | os.PathLike[str], *, allow_truncated_tail: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a JSONL file; a malformed line raises an error naming file and line.

    With ``allow_truncated_tail`` a final line without a newline that does not parse (what a killed
    writer leaves behind) is skipped instead, so resumable jobs can pick up after a crash.

    Lines are read one at a time, so a reader that stops early (a trace dataset read up to what a run
    consumes) holds one line, not the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"no such file: {path}")
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                if allow_truncated_tail and not line.endswith("\n"):  # only the last line can lack its newline
                    return
                raise DataFormatError(f"{path}:{lineno}: malformed JSON line ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield obj


def read_jsonl(path: str | os.PathLike[str], *, allow_truncated_tail: bool = False) -> list[dict[str, Any]]:
    """All records of a JSONL file (see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path, allow_truncated_tail=allow_truncated_tail))
