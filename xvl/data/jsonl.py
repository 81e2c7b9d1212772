"""JSON-lines files of objects, read with errors that name the file and the 1-based line."""
from __future__ import annotations

import json
import os
from typing import Iterator, Tuple


def iter_jsonl_objects(path: str, what: str = "data file") -> Iterator[Tuple[int, dict]]:
    """Yield ``(line number, object)`` for each non-blank line of ``path`` (a UTF-8 BOM is allowed).

    Raises ``FileNotFoundError`` ("<what> not found") for a missing file and ``ValueError``
    ("<path>, line <n>: ...") for a line that is not valid UTF-8, not valid JSON, or not an object.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: not valid UTF-8 ({e})") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}, line {lineno}: expected a JSON object, got {type(rec).__name__}")
            yield lineno, rec
