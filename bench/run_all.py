"""Run every benchmark under bench/ and print their figures as one table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = {"run_all", "__init__"}


def main() -> int:
    """Run each bench module in its own process; print a table of what each reported."""
    failed = []
    rows: list[tuple[str, str]] = []
    for script in sorted((ROOT / "bench").glob("*.py")):
        name = script.stem
        if name in SKIP or name.startswith("_"):
            continue
        print(f"running bench/{script.name} ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, "-m", f"bench.{name}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            failed.append(name)
            rows.append((name, f"FAILED: {done.stderr.strip().splitlines()[-1:]}"))
            continue
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                figures = json.loads(line)
                label = figures.pop("bench", name)
                rows.append((label, ", ".join(f"{k}={v}" for k, v in figures.items())))
    width = max(len(label) for label, _ in rows) if rows else 10
    print(f"{'bench'.ljust(width)}  figures")
    for label, figures in rows:
        print(f"{label.ljust(width)}  {figures}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
