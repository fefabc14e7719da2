"""Writing a benchmark's result: atomically to ``benchmarks/results/``, and as the last stdout line."""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def publish(report: dict, path: Path) -> Path:
    """Write ``report`` as JSON to ``path`` (tmp + rename: never a half-written file), then print it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)
    print(json.dumps(report))
    return path
