"""The fault suite's table: each fault test records a row (what happened, measured, the goal), and
the run prints the rows at the end (conftest's pytest_terminal_summary), also under xdist: rows go
to a JSON-lines file named by MESHWAY_FAULT_TABLE, which the controlling process sets."""
from __future__ import annotations

import json
import os
from pathlib import Path

ENV = "MESHWAY_FAULT_TABLE"


def record_fault(experiment: str, measured: str, goal: str) -> None:
    path = os.environ.get(ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"experiment": experiment, "measured": measured, "goal": goal}) + "\n")


def render_fault_table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    if not rows:
        return ""
    lines = ["| experiment | measured | goal |", "|---|---|---|"]
    lines += [f"| {r['experiment']} | {r['measured']} | {r['goal']} |" for r in rows]
    return "\n".join(lines)
