"""The figures of docs/RESULTS.md: one map of every run side by side, settings in rows, seeds in
columns, from the PNGs that `topoaudio evaluate` drew (out/run<i>/<layer>_<map>.png).

    python docs/results_figures.py eval/ block3 music_vs_speech docs/figures/block3_music_vs_speech.png
"""
import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from results_tables import SETTINGS_ORDER  # noqa: E402  (beside this script: the tables' row order)


def grid_figure(eval_dir, layer: str, name: str, out) -> None:
    eval_dir = pathlib.Path(eval_dir)
    runs = json.loads((eval_dir / "metrics.json").read_text())["runs"]
    cells = {(run["topo"], run["seed"]): eval_dir / f"run{i}" / f"{layer}_{name}.png"
             for i, run in enumerate(runs)}
    settings = [s for s in SETTINGS_ORDER if any(topo == s for topo, _ in cells)]
    seeds = sorted({seed for _, seed in cells})
    figure, axes = plt.subplots(len(settings), len(seeds), figsize=(4 * len(seeds), 3.6 * len(settings)),
                                squeeze=False)
    for row, setting in enumerate(settings):
        for column, seed in enumerate(seeds):
            axis = axes[row][column]
            axis.axis("off")
            path = cells.get((setting, seed))
            if path is not None and path.is_file():
                axis.imshow(mpimg.imread(path))
            axis.set_title(f"{setting}, seed {seed}", fontsize=10)
    figure.suptitle(f"{layer}: {name} (each run's trained map; sheet as trained)")
    figure.tight_layout()
    figure.savefig(out, dpi=90)
    plt.close(figure)


if __name__ == "__main__":
    grid_figure(*sys.argv[1:5])
