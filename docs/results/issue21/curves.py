"""Learning curves of the issue-21 study: each task's validation accuracy against the step, every
run, coloured by group, from the committed runs/*/metrics.jsonl.

    python docs/results/issue21/curves.py [RUNS_DIR] [OUT_PNG]
      (defaults: docs/results/issue21/runs, docs/figures/issue21_curves.png)

Also prints, as markdown, the word accuracy of every run at each validation step: the task whose
seed-to-seed spread decides the accuracy-parity claim.
"""
from __future__ import annotations

import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
GROUP_COLOURS = {"none": "tab:grey", "spatial": "tab:blue", "topoloss": "tab:orange"}


def validations(run_dir: pathlib.Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if '"val_accuracy"' in line]
    if not rows:
        raise SystemExit(f"{run_dir / 'metrics.jsonl'}: no validation rows")
    return rows


def main() -> None:
    runs_dir = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "runs"
    default_out = HERE.parents[1] / "figures" / "issue21_curves.png"
    out = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else default_out
    runs = {path.parent.name: validations(path.parent) for path in sorted(runs_dir.glob("*/metrics.jsonl"))}
    if not runs:
        raise SystemExit(f"{runs_dir}: no runs (expected <group>-seed<k>/metrics.jsonl)")
    tasks = list(next(iter(runs.values()))[-1]["val_accuracy"])
    figure, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        for name, rows in runs.items():
            group = name.rsplit("-seed", 1)[0]
            axis.plot([r["step"] for r in rows], [100 * r["val_accuracy"][task] for r in rows],
                      color=GROUP_COLOURS.get(group, "black"), alpha=0.8, linewidth=1.2, marker=".")
        axis.axhline(100 * rows[-1]["chance"][task], color="black", linestyle=":", linewidth=1)
        axis.set_title(f"{task} (dotted: chance)")
        axis.set_xlabel("step (16 clips each)")
        axis.set_ylabel("validation accuracy (%)")
    handles = [plt.Line2D([], [], color=colour, label=group) for group, colour in GROUP_COLOURS.items()]
    axes[0][0].legend(handles=handles, fontsize=8)
    figure.suptitle("Issue-21 study: validation accuracy of every run (5 seeds per group)")
    figure.tight_layout()
    figure.savefig(out, dpi=90)
    steps = [r["step"] for r in next(iter(runs.values()))]
    print("| run | " + " | ".join(str(step) for step in steps) + " |")
    print("|---|" + "---:|" * len(steps))
    for name, rows in runs.items():
        by_step = {r["step"]: r["val_accuracy"]["word"] for r in rows}
        print(f"| {name} | " + " | ".join(f"{100 * by_step[s]:.0f}" if s in by_step else "-"
                                          for s in steps) + " |")
    print(f"\nfigure: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
