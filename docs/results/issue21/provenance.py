"""Per run of the issue-21 study: how, where and beside what it trained, from the provenance.jsonl
that train_study.py writes (one line per piece of training; a resumed run has several).

    python docs/results/issue21/provenance.py [RUNS_DIR]   (default: docs/results/issue21/runs)

Prints a markdown table: run, pieces (1 = never interrupted), wall time, median clips/s, commit,
machine, threads, and the 1-minute load average while it trained (mean / max; the run itself
keeps it near 2-3 on two cores: more means something ran beside it).
"""
from __future__ import annotations

import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent


def rows(runs_dir: pathlib.Path):
    for path in sorted(runs_dir.glob("*/provenance.jsonl")):
        pieces = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        wall = sum(piece["wall_s"] for piece in pieces)
        rates = [piece["median_clips_per_s"] for piece in pieces if piece["median_clips_per_s"]]
        loads = [piece["load_1min_mean"] for piece in pieces if piece["load_1min_mean"] is not None]
        peaks = [piece["load_1min_max"] for piece in pieces if piece["load_1min_max"] is not None]
        commits = sorted({piece["commit"][:7] + ("+" if "+" in piece["commit"] else "")
                          for piece in pieces})
        yield (path.parent.name, len(pieces), f"{wall / 60:.1f} min",
               " / ".join(f"{rate:.1f}" for rate in rates), ", ".join(commits),
               f"{pieces[0]['machine']} ({pieces[0]['cpus']} cpus)", pieces[0]["omp_num_threads"],
               (f"{sum(loads) / len(loads):.1f} / {max(peaks):.1f}" if loads else "n/a"),
               pieces[-1]["reached_step"])


def main() -> None:
    runs_dir = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "runs"
    found = list(rows(runs_dir))
    if not found:
        raise SystemExit(f"no */provenance.jsonl under {runs_dir}")
    print("| run | pieces | wall | clips/s (median per piece) | commit | machine | threads "
          "| load mean / max | step |")
    print("|---|---:|---:|---|---|---|---|---|---:|")
    for row in found:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


if __name__ == "__main__":
    main()
