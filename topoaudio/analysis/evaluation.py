"""Measure trained checkpoints: tonotopy, amplitude-modulation and music/speech maps on each tapped
layer's sheet, their smoothness (with shuffle nulls), Moran's I and patches, NH2015 component
predictivity and RSA; figures, a metrics JSON and a Markdown report (docs/SCIENCE.md 6-7)."""
from __future__ import annotations

import json
import operator
import pathlib
import tempfile

import numpy as np
import torch
from tqdm import tqdm

from topoaudio.analysis.maps import plot_sheet_map, plot_smoothness_curve
from topoaudio.analysis.stimuli import am_noise, log_spaced, pure_tones
from topoaudio.analysis.topography import morans_i, patches, smoothness
from topoaudio.analysis.tuning import best_frequency, best_rate, selectivity
from topoaudio.checkpoint import load_trained
from topoaudio.data.natsound165 import MUSIC, SPEECH, NatSound165, load_natsound165
from topoaudio.models import tapped

TONE_FREQS = log_spaced(50.0, 8000.0, 40)
AM_RATES = log_spaced(2.0, 256.0, 8)


@torch.no_grad()
def layer_responses(model, sheets: dict, waveforms: torch.Tensor, device="cpu", batch_size: int = 16,
                    desc: str = "stimuli") -> dict:
    """{layer: unit responses [n_stimuli, N]} for every sheet, from one pass over the stimuli."""
    model = model.to(device)
    chunks: dict[str, list] = {layer: [] for layer in sheets}
    for start in tqdm(range(0, len(waveforms), batch_size), desc=desc, leave=False):
        batch = waveforms[start:start + batch_size].to(device)
        with tapped(model, list(sheets)) as features:
            model(batch)
        for layer, sheet in sheets.items():
            chunks[layer].append(sheet.responses(features[layer]).float().cpu())
    return {layer: torch.cat(parts) for layer, parts in chunks.items()}


def _map_statistics(values, positions, shuffles: int, seed: int) -> dict:
    result = smoothness(values, positions, n_shuffles=shuffles, seed=seed)
    result["morans_i"] = morans_i(values, positions, weights="knn", k=8)
    return result


def _scalar(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _scalar(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scalar(v) for v in value]
    return value


def evaluate_checkpoint(trained: tuple, natsound: NatSound165, out_dir, device="cpu", shuffles: int = 100,
                        source: str = "") -> dict:
    """Every measurement for one loaded checkpoint (model, sheets, config: checkpoint.load_trained);
    figures under out_dir; returns the metrics, labelled with `source` (the checkpoint's path)."""
    from topoaudio.brain import predict_components, rsa

    model, sheets, config = trained
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tones = layer_responses(model, sheets, pure_tones(TONE_FREQS), device, desc="tones")
    am = layer_responses(model, sheets, am_noise(AM_RATES), device, desc="AM noise")
    natural = layer_responses(model, sheets, natsound.waveforms, device, desc="natural sounds")
    # one layer at a time, so that the cross-validated ridge (seconds per layer) shows progress
    predictivity = {layer: predict_components(natural[layer], natsound.components)
                    for layer in tqdm(sheets, desc="component R²", leave=False)}
    metrics = {"checkpoint": source, "layers": {},
               **{key: config[key] for key in ("model", "topo", "seed")}}
    statistics = tqdm(total=len(sheets) * 3, desc="map statistics", leave=False)
    for layer, sheet in sheets.items():
        positions = sheet.positions
        maps = {
            "tonotopy": (torch.log2(best_frequency(tones[layer], TONE_FREQS)), "log2 best frequency (Hz)"),
            "am_rate": (torch.log2(best_rate(am[layer], AM_RATES)), "log2 best AM rate (Hz)"),
            "music_vs_speech": (selectivity(natural[layer], natsound.categories, set(MUSIC), set(SPEECH)),
                                "Welch t, music - speech"),
        }
        layer_metrics: dict = {"n_units": sheet.n_units}
        for name, (values, label) in maps.items():
            statistics.set_postfix_str(f"{layer} {name}")
            stats = _map_statistics(values, positions, shuffles, config["seed"])
            diverging = name == "music_vs_speech"
            # a diverging map is centred on t = 0, so white means "no preference", not "mid-range"
            limit = float(values[torch.isfinite(values)].abs().max()) if diverging else None
            plot_sheet_map(values, positions, out / f"{layer}_{name}.png",
                           f"{layer}: {name} ({config['topo']}, seed {config['seed']})",
                           cmap="RdBu_r" if diverging else "viridis", label=label,
                           vmin=-limit if diverging else None, vmax=limit)
            plot_smoothness_curve(stats, out / f"{layer}_{name}_smoothness.png",
                                  f"{layer}: {name} smoothness", value_label=label)
            layer_metrics[name] = {key: _scalar(stats[key]) for key in stats
                                   if key in ("smoothness", "null_mean", "null_interval", "p_value",
                                              "morans_i")}
            statistics.update()
        t_map = maps["music_vs_speech"][0]
        for kind, values in (("music", t_map), ("speech", -t_map)):
            found = patches(values, positions, threshold=2.0)
            layer_metrics[f"{kind}_patches"] = {"count": int(found["count"]),
                                                "areas_mm2": _scalar(found["areas_mm2"])}
        layer_metrics["component_r2"] = dict(zip(natsound.component_names,
                                                 _scalar(predictivity[layer]["median_r2"]), strict=True))
        layer_metrics["rsa_components"] = float(rsa(natural[layer], natsound.components))
        metrics["layers"][layer] = layer_metrics
    statistics.close()
    return metrics


def holm(p_values: list) -> list:
    """Holm's step-down adjustment of p values for testing them all at once (None stays None):
    the k-th smallest of m is multiplied by m - k + 1, capped at 1, and kept non-decreasing."""
    order = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def summarise(runs: list[dict]) -> dict:
    """Mean and spread per group (the topo setting) of every scalar, and Welch tests between two
    groups: {measure: {group: {mean, sd, n}, "welch_t", "p", "p_holm"}}; p_holm adjusts p over
    every measure tested (Holm), since one report makes dozens of tests."""
    from scipy import stats as scipy_stats

    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["topo"], []).append(run)
    measures: dict[str, dict[str, list[float]]] = {}
    for group, members in groups.items():
        for run in members:
            for key, value in _flatten(run["layers"]).items():
                measures.setdefault(key, {}).setdefault(group, []).append(value)
    summary = {}
    for key, by_group in measures.items():
        entry = {g: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                     "n": len(v)} for g, v in by_group.items()}
        names = sorted(by_group)
        if len(names) == 2 and all(len(by_group[g]) >= 2 for g in names):
            entry["compared"] = names  # t = (first - second) / standard error
            if any(np.std(by_group[g]) > 0 for g in names):
                test = scipy_stats.ttest_ind(by_group[names[0]], by_group[names[1]], equal_var=False)
                entry["welch_t"], entry["p"] = float(test.statistic), float(test.pvalue)
            else:  # no spread within either group: the t statistic is undefined, not 0
                entry["welch_t"] = entry["p"] = None
        summary[key] = entry
    tested = [key for key, entry in summary.items() if "compared" in entry]
    for key, p_holm in zip(tested, holm([summary[key]["p"] for key in tested]), strict=True):
        summary[key]["p_holm"] = p_holm
    return summary


def _flatten(layers: dict) -> dict:
    flat = {}
    for layer, values in layers.items():
        for name in ("tonotopy", "am_rate", "music_vs_speech"):
            flat[f"{layer}/{name}/smoothness"] = values[name]["smoothness"]
            flat[f"{layer}/{name}/morans_i"] = values[name]["morans_i"]
        for kind in ("music", "speech"):
            flat[f"{layer}/{kind}_patches"] = values[f"{kind}_patches"]["count"]
        for component, r2 in values["component_r2"].items():
            flat[f"{layer}/r2_{component}"] = r2
    return flat


def write_report(out_dir, runs: list[dict], summary: dict) -> pathlib.Path:
    """report.md: one table per checkpoint with its figures beside it, then the group comparison."""
    out = pathlib.Path(out_dir)
    lines = ["# topoaudio evaluation", "",
             "Read the maps against each other, not against zero: on `channel_freq` sheets the frequency "
             "rows of a conv map are laid along the sheet's y axis by construction, so some tonotopy "
             "along y exists in every model, topographic or not. Smoothness is reported with the 95 % "
             "interval of the same statistic after shuffling the map across units.", ""]
    for index, run in enumerate(runs):
        lines += [f"## {run['checkpoint']} ({run['model']}, topo={run['topo']}, seed {run['seed']})", "",
                  "| layer | units | tonotopy smooth. (null 95 %) | AM smooth. | music/speech smooth. | "
                  "Moran's I (BF) | music / speech patches | median R² speech | median R² music |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for layer, m in run["layers"].items():
            tono = m["tonotopy"]
            null = tono.get("null_interval", [float("nan")] * 2)
            r2 = m["component_r2"]
            lines.append(f"| {layer} | {m['n_units']} | {tono['smoothness']:.3f} "
                         f"({null[0]:.3f}-{null[1]:.3f}) | {m['am_rate']['smoothness']:.3f} | "
                         f"{m['music_vs_speech']['smoothness']:.3f} | {tono['morans_i']:.3f} | "
                         f"{m['music_patches']['count']} / {m['speech_patches']['count']} | "
                         f"{r2.get('speech', float('nan')):.3f} | {r2.get('music', float('nan')):.3f} |")
        lines.append("")
        for layer in run["layers"]:
            images = " ".join(f"![{layer} {name}](run{index}/{layer}_{name}.png)"
                              for name in ("tonotopy", "am_rate", "music_vs_speech"))
            lines += [images, ""]
    if len(runs) > 1:
        lines += ["## Across checkpoints (mean ± sd; Welch t-test between two groups)", "",
                  "t = (first group - second group) / standard error; n/a where neither group varies. "
                  "Holm p adjusts p for every test in this table at once.", "",
                  "| measure | groups | t | p | Holm p |", "|---|---|---:|---:|---:|"]

        def number(x, spec):
            return "n/a" if x is None else format(x, spec)

        for key, entry in summary.items():
            groups = "; ".join(f"{g}: {v['mean']:.3f} ± {v['sd']:.3f} (n={v['n']})"
                               for g, v in entry.items() if isinstance(v, dict))
            lines.append(f"| {key} | {groups} | {number(entry.get('welch_t'), '.2f')} | "
                         f"{number(entry.get('p'), '.3g')} | {number(entry.get('p_holm'), '.3g')} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def usable_device(device) -> torch.device:
    """torch.device(device) if a tensor can live there, else a ValueError saying why."""
    try:
        resolved = torch.device(device)
        if resolved.type == "meta":
            raise ValueError("meta tensors hold no numbers")
        torch.empty(0, device=resolved)  # raises when the device is absent or not built in
    except (RuntimeError, TypeError, ValueError, NotImplementedError, AssertionError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"device {device!r} is not usable here: {reason}") from None
    return resolved


def count_of_shuffles(shuffles) -> int:
    """The smoothness null's shuffle count: an integer >= 1 (smoothness() needs one to draw a null)."""
    try:
        count = operator.index(shuffles)  # ints (NumPy's too), not floats or strings
    except TypeError:
        count = 0
    if count < 1 or isinstance(shuffles, bool):
        raise ValueError(f"shuffles must be an integer >= 1, got {shuffles!r}")
    return count


def writable_directory(out_dir) -> pathlib.Path:
    """out_dir created if needed and proven writable (a file is written and removed), so that a bad
    --out fails before minutes of measurement rather than at the first figure."""
    out = pathlib.Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {out} is an existing file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise ValueError(f"output directory {out} cannot be created or written: "
                         f"{error.strerror or error}") from None
    return out


def evaluate_checkpoints(checkpoints: list, natsound_dir, out_dir, device="cpu", shuffles: int = 100) -> dict:
    """Evaluate checkpoints; writes out_dir/run<i>/*.png, metrics.json and report.md.

    Everything that can be wrong with the inputs is found before the first measurement, in order
    of cost: the settings, the output directory, every natsound165 file, then every checkpoint
    (all loaded first). Errors are ValueError / FileNotFoundError naming the setting or file."""
    shuffles = count_of_shuffles(shuffles)
    device = usable_device(device)
    paths = [pathlib.Path(p) for p in checkpoints]
    if not paths:
        raise ValueError("no checkpoint to evaluate")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint(s) not found: {missing}")
    out = writable_directory(out_dir)
    natsound = load_natsound165(natsound_dir)
    trained = [load_trained(path) for path in tqdm(paths, desc="loading checkpoints", leave=False)]
    runs = [evaluate_checkpoint(model, natsound, out / f"run{index}", device, shuffles, str(path))
            for index, (path, model) in enumerate(tqdm(list(zip(paths, trained, strict=True)),
                                                       desc="checkpoints"))]
    summary = summarise(runs)
    (out / "metrics.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))
    report = write_report(out, runs, summary)
    return {"runs": runs, "summary": summary, "report": str(report)}
