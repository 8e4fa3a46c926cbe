"""Where a benchmark's JSON goes: one file per run, named after what ran and when it ran."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def save(folder: Path, result: dict[str, Any], *name: str) -> Path:
    """Write `result` as `<folder>/<name parts joined by ->-<time>.json` (":" and "/" in a part, as a
    model spec has them, become "-") and return the path."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = "-".join(part.replace(":", "-").replace("/", "-") for part in name)
    path = folder / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
