"""The tables of docs/RESULTS.md from the metrics.json that `topoaudio evaluate` writes.

    python docs/results_tables.py eval/metrics.json [readout/*.json] > tables.md

Every number on the page comes from that file: task accuracy, the primary family (Moran's I of the
within-band tonotopy, AM-rate and music/speech maps per layer) for the trained model and its two
controls, each setting against `none` (Welch t, p, Holm p over the primary family as the evaluate
command computes them), equivalence tests for accuracy and component R², and R² beside the untrained
network and the time-averaged cochleagram; with `topoaudio readout --out` files, the linear readout
of each checkpoint (matched to its run by checkpoint path).
"""
import json
import sys

SETTINGS_ORDER = ("none", "spatial", "topoloss")
COMPONENTS = ("speech", "music", "lowfreq", "highfreq", "pitch", "envsounds")


def fmt(x, spec: str) -> str:
    return "n/a" if x is None or x != x else format(x, spec)


def ordered(runs) -> list:
    rank = {name: i for i, name in enumerate(SETTINGS_ORDER)}
    return sorted(runs, key=lambda run: (rank.get(run["topo"], len(rank)), run["seed"]))


def accuracy_table(runs) -> str:
    tasks = [t for t in (runs[0].get("val_accuracy") or {}) if any(r["val_accuracy"].get(t) is not None
                                                                    for r in runs)]
    lines = ["| setting | seed | sheet | " + " | ".join(tasks) + " |",
             "|---|---:|---|" + "---:|" * len(tasks)]
    for run in runs:
        cells = [fmt(run["val_accuracy"].get(t), ".3f") for t in tasks]
        lines.append(f"| {run['topo']} | {run['seed']} | {run.get('sheet')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def primary_table(runs) -> str:
    """Moran's I (z, p Holm) of each primary map: trained, untrained twin, shuffled positions."""
    lines = ["| setting | seed | layer | map | trained I (z) Holm p | untrained I (z) Holm p "
             "| shuffled positions I (z) Holm p |", "|---|---:|---|---|---:|---:|---:|"]
    for run in runs:
        conditions = [run["primary"]] + [run["controls"][c]["primary"]
                                         for c in ("untrained", "shuffled_positions")]
        keyed = [{(t["layer"], t["map"]): t for t in tests} for tests in conditions]
        for test in run["primary"]:
            cells = []
            for tests in keyed:
                t = tests[(test["layer"], test["map"])]
                cells.append(f"{fmt(t['morans_i'], '.3f')} ({fmt(t['z'], '.1f')}) {fmt(t['p_holm'], '.3g')}")
            lines.append(f"| {run['topo']} | {run['seed']} | {test['layer']} | {test['map']} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def _group_cell(entry, group) -> str:
    g = entry.get(group)
    return "n/a" if g is None else f"{g['mean']:.3f} ± {g['sd']:.3f}"


def comparison_table(summary, layers, family: str = "primary") -> str:
    """Each setting against none, for the measures of `family` (mean ± sd over seeds)."""
    lines = ["| layer | measure | none | spatial | topoloss | pair | t | p | Holm p |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for key, entry in summary.items():
        parts = key.split("/")
        if entry.get("family") != family or parts[0] not in layers:
            continue
        for pair, test in entry.get("comparisons", {}).items():
            lines.append(f"| {parts[0]} | {'/'.join(parts[1:])} | {_group_cell(entry, 'none')} "
                         f"| {_group_cell(entry, 'spatial')} | {_group_cell(entry, 'topoloss')} | {pair} "
                         f"| {fmt(test['welch_t'], '.2f')} | {fmt(test['p'], '.3g')} "
                         f"| {fmt(test.get('p_holm'), '.3g')} |")
    return "\n".join(lines)


def parity_table(summary) -> str:
    lines = ["| measure | pair | difference | 90 % interval | margin | TOST p | equivalent |",
             "|---|---|---:|---:|---:|---:|---|"]
    for key, entry in summary.items():
        for pair, test in entry.get("comparisons", {}).items():
            parity = test.get("tost")
            if parity is None:
                continue
            interval = ("n/a" if parity["interval"] is None
                        else f"{parity['interval'][0]:.3f} to {parity['interval'][1]:.3f}")
            verdict = {True: "yes", False: "no", None: "n/a"}[parity["equivalent"]]
            lines.append(f"| {key} | {pair} | {parity['difference']:.3f} | {interval} "
                         f"| {parity['margin']:.3f} | {fmt(parity['p'], '.3g')} | {verdict} |")
    return "\n".join(lines)


def r2_table(runs, baselines) -> str:
    """Median component R² per layer: trained (mean over seeds per setting), untrained twins, and
    the time-averaged cochleagram."""
    lines = ["| inputs | layer | " + " | ".join(COMPONENTS) + " |", "|---|---|" + "---:|" * len(COMPONENTS)]
    rows: dict = {}
    for run in runs:
        untrained = run["controls"]["untrained"]["layers"]
        for condition, layers in (("trained", run["layers"]), ("untrained", untrained)):
            name = f"{run['topo']} ({condition})"
            for layer, m in layers.items():
                for c in COMPONENTS:
                    rows.setdefault((name, layer), {}).setdefault(c, []).append(m["component_r2"][c])
    for (name, layer), values in rows.items():
        cells = [fmt(sum(v) / len(v), ".3f") for v in (values[c] for c in COMPONENTS)]
        lines.append(f"| {name} | {layer} | " + " | ".join(cells) + " |")
    for name, scores in (baselines or {}).items():
        lines.append(f"| time-averaged {name} | - | "
                     + " | ".join(fmt(scores["component_r2"][c], ".3f") for c in COMPONENTS) + " |")
    return "\n".join(lines)


def readout_table(runs, readouts) -> str:
    """Held-out accuracy of the linear readout per run and task (chance in the header)."""
    by_checkpoint = {r["checkpoint"]: r for r in readouts}
    first = next(iter(by_checkpoint.values()))
    tasks = [t for t, v in first["results"].items() if "accuracy" in v]
    chance = " | ".join(f"{t} (chance {first['results'][t]['chance']:.3f})" for t in tasks)
    lines = [f"| setting | seed | layer | {chance} |", "|---|---:|---|" + "---:|" * len(tasks)]
    for run in runs:
        readout = by_checkpoint.get(run["checkpoint"])
        if readout is None:
            continue
        cells = [fmt(readout["results"][t].get("accuracy"), ".3f") for t in tasks]
        lines.append(f"| {run['topo']} | {run['seed']} | {readout['layer']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(path: str, readout_paths=()) -> None:
    metrics = json.load(open(path))
    runs = ordered(metrics["runs"])
    layers = list(runs[0]["layers"])
    print("## Task accuracy (validation)\n")
    print(accuracy_table(runs))
    print("\n## Primary family per run, with controls\n")
    print(primary_table(runs))
    print("\n## Each setting against none: primary family\n")
    print(comparison_table(metrics["summary"], layers))
    print("\n## Parity (TOST)\n")
    print(parity_table(metrics["summary"]))
    print("\n## Component R² (mean over seeds) and baselines\n")
    print(r2_table(runs, metrics.get("baselines")))
    if readout_paths:
        print("\n## Linear readout of the last layer on held-out scenes\n")
        print(readout_table(runs, [json.load(open(p)) for p in readout_paths]))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
