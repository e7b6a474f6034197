"""JSON-lines journals from which an interrupted evaluation run resumes (`eval/rd.py`,
`eval/detection.py`): one record per line, appended and flushed as each result comes."""
from __future__ import annotations

import json
import os
from pathlib import Path


def read(path: str | os.PathLike) -> list[dict]:
    """The journal's records in order ([] if there is none); a line cut short by a kill while
    writing it is left out."""
    records = []
    for line in Path(path).read_text().splitlines() if os.path.exists(path) else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
