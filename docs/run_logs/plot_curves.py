"""Validation accuracy of each task against the step, from a run's metrics.jsonl, with chance.

Run: python docs/run_logs/plot_curves.py RUN_DIR  (writes RUN_DIR/curves.png and prints the table)
"""
import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    run = pathlib.Path(sys.argv[1])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    validations = [r for r in rows if "val_accuracy" in r]
    tasks = list(validations[-1]["val_accuracy"])
    figure, axes = plt.subplots(figsize=(6.5, 4))
    print("| task | " + " | ".join(str(r["step"]) for r in validations) + " | chance |")
    print("|---|" + "---:|" * (len(validations) + 1))
    for task in tasks:
        steps = [r["step"] for r in validations if r["val_accuracy"][task] is not None]
        values = [100 * r["val_accuracy"][task] for r in validations if r["val_accuracy"][task] is not None]
        chance = 100 * validations[-1]["chance"][task]
        (line,) = axes.plot(steps, values, marker="o", label=task)
        axes.axhline(chance, color=line.get_color(), linestyle=":", linewidth=1)
        print(f"| {task} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {chance:.1f} |")
    axes.set_xlabel("step (16 clips each)")
    axes.set_ylabel("validation accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_title(f"{run.name}: validation accuracy (dotted: chance)")
    axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(run / "curves.png", dpi=110)


if __name__ == "__main__":
    main()
