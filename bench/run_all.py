"""Run every benchmark under bench/ and print their figures as one table.

Each script runs in its own process and prints one JSON object per line; every key of every
object becomes a row: bench, figure, value. Comparisons print as "ours vs anchor" (the anchor
is agno's standalone AgentOS for concurrency, raw SQL or the raw embedder elsewhere), and
`meets_*` rows say whether a target is met.

    python bench/run_all.py            # full size (about 25 minutes: the soak takes 10)
    python bench/run_all.py --quick    # smaller runs of the slow ones, for a first look
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = {"run_all", "__init__"}
# Smaller runs for --quick; the full run uses each script's defaults.
QUICK_ARGS = {
    "concurrency": ["--turns", "2"],
    "knowledge": ["--chunks", "10000", "--queries", "50"],
    "layer_overhead": ["--turns", "50"],
    "soak": ["--minutes", "1"],
    "startup_memory": ["--quick"],
}
# Keys that say which measurement an object is rather than being figures.
LABEL_KEYS = ("server", "concurrency", "path", "event", "search_type")


def label_of(name: str, figures: dict[str, object]) -> str:
    """The bench column: the object's own name plus what distinguishes its rows."""
    label = str(figures.pop("bench", name))
    for key in LABEL_KEYS:
        if key in figures and isinstance(figures[key], str | int) and key != "bench":
            value = figures.pop(key)
            label += f" {value}" if key in ("path", "event", "search_type") else f" {key}={value}"
    return label


def main() -> int:
    """Run each bench module in its own process; print a table of what each reported."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs of the slow benches")
    args = parser.parse_args()
    failed = []
    rows: list[tuple[str, str, str]] = []
    for script in sorted((ROOT / "bench").glob("*.py")):
        name = script.stem
        if name in SKIP or name.startswith("_"):
            continue
        extra = QUICK_ARGS.get(name, []) if args.quick else []
        print(f"running bench/{script.name} {' '.join(extra)}...", file=sys.stderr, flush=True)
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", f"bench.{name}", *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        took = time.monotonic() - started
        print(f"  done in {took:.0f} s", file=sys.stderr, flush=True)
        if done.returncode != 0:
            failed.append(name)
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append((name, "FAILED", last[:200]))
            continue
        for line in done.stdout.splitlines():
            if not line.startswith("{"):
                continue
            figures = json.loads(line)
            label = label_of(name, figures)
            rows.extend((label, key, str(value)) for key, value in figures.items())
    widths = [max(len(row[i]) for row in [("bench", "figure", ""), *rows]) for i in (0, 1)]
    print(f"{'bench'.ljust(widths[0])}  {'figure'.ljust(widths[1])}  value")
    previous = ""
    for label, key, value in rows:
        shown = label if label != previous else ""
        previous = label
        print(f"{shown.ljust(widths[0])}  {key.ljust(widths[1])}  {value}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
