"""What the speed, gas and size benchmarks share: where results go, how they are written and shown."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
console = Console()

# Openings in the style of the text the reference model was trained on (Python sources).
PROMPTS = [
    "def __init__(self, ",
    "import os\nimport sys\n\n",
    "class Queue:\n    \"\"\"",
    "    for key, value in ",
    "def read_file(path):\n",
    "    if not isinstance(",
    "# Copyright 2001 Python Software Foundation\n",
    "    raise ValueError(",
]


def pyplot():
    """matplotlib's pyplot on the file-only backend: benchmarks run on headless machines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def machine() -> dict:
    """Enough about the machine to tell two runs' figures apart."""
    import os

    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "load_avg": list(os.getloadavg()),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_json(name: str, report: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


def show(title: str, columns: list[str], rows: list[list]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right" if c != columns[0] else "left")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    console.print(table)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
