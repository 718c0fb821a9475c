"""The tables of docs/RESULTS.md from the metrics.json that `topoaudio evaluate` writes.

    python docs/results_tables.py eval/metrics.json > tables.md

Per run: the measures of every layer. Spatial vs none: mean ± sd per group, Welch t written as
(spatial - none) / se, its p, and Holm's step-down adjustment of those p over the rows of this
table (the evaluate command's report adjusts over all of its measures, a larger family).
"""
import json
import sys

from topoaudio.analysis.evaluation import holm

MEASURES = [  # (summary key suffix, label)
    ("tonotopy/smoothness", "tonotopy smoothness"),
    ("tonotopy/morans_i", "tonotopy Moran's I"),
    ("am_rate/smoothness", "AM smoothness"),
    ("am_rate/morans_i", "AM Moran's I"),
    ("music_vs_speech/smoothness", "music/speech smoothness"),
    ("music_vs_speech/morans_i", "music/speech Moran's I"),
    ("music_patches", "music patches"),
    ("speech_patches", "speech patches"),
    ("r2_speech", "R² speech component"),
    ("r2_music", "R² music component"),
    ("r2_lowfreq", "R² low-frequency component"),
]


def per_run_table(runs) -> str:
    lines = ["| topo | seed | layer | tonotopy smooth. | AM smooth. | music/speech smooth. | null 97.5 % "
             "| Moran's I (BF) | Moran's I (t) | music / speech patches | R² speech | R² music | RSA |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        for layer, m in run["layers"].items():
            ms = m["music_vs_speech"]
            lines.append(
                f"| {run['topo']} | {run['seed']} | {layer} | {m['tonotopy']['smoothness']:.3f} "
                f"| {m['am_rate']['smoothness']:.3f} | {ms['smoothness']:.3f} | {ms['null_interval'][1]:.3f} "
                f"| {m['tonotopy']['morans_i']:.3f} | {ms['morans_i']:.3f} "
                f"| {m['music_patches']['count']} / {m['speech_patches']['count']} "
                f"| {m['component_r2']['speech']:.3f} | {m['component_r2']['music']:.3f} "
                f"| {m['rsa_components']:.3f} |")
    return "\n".join(lines)


def comparison_table(summary, layers) -> str:
    rows = []
    for layer in layers:
        for suffix, label in MEASURES:
            entry = summary.get(f"{layer}/{suffix}")
            if entry is None or "spatial" not in entry or "none" not in entry:
                continue
            t = entry.get("welch_t")
            if t is not None and entry.get("compared") == ["none", "spatial"]:
                t = -t  # the summary's t is (none - spatial); the page shows (spatial - none)
            rows.append((layer, label, entry["spatial"], entry["none"], t, entry.get("p")))
    adjusted = holm([row[5] for row in rows])
    lines = ["| layer | measure | spatial (n = 3) | none (n = 3) | t | p | Holm p |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for (layer, label, spatial, none, t, p), p_holm in zip(rows, adjusted, strict=True):
        def fmt(x, spec):
            return "n/a" if x is None else format(x, spec)
        lines.append(f"| {layer} | {label} | {spatial['mean']:.3f} ± {spatial['sd']:.3f} "
                     f"| {none['mean']:.3f} ± {none['sd']:.3f} | {fmt(t, '.2f')} | {fmt(p, '.3g')} "
                     f"| {fmt(p_holm, '.3g')} |")
    return "\n".join(lines)


def main(path: str) -> None:
    metrics = json.load(open(path))
    runs = sorted(metrics["runs"], key=lambda run: (run["topo"] != "spatial", run["seed"]))
    layers = list(runs[0]["layers"])
    print("## Per run\n")
    print(per_run_table(runs))
    print("\n## Spatial vs none\n")
    print(comparison_table(metrics["summary"], layers))


if __name__ == "__main__":
    main(sys.argv[1])
