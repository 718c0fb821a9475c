"""Measure trained checkpoints: tonotopy (plain and within iso-frequency bands), amplitude-modulation
and music/speech maps on each tapped layer's sheet, their smoothness (with shuffle nulls and the
signed nearest-bin z), Moran's I with its permutation p, patches, NH2015 component predictivity and
RSA, each beside two controls (the untrained network, shuffled positions); the primary family
Holm-adjusted, parity by equivalence tests; figures, a metrics JSON and a Markdown report
(docs/SCIENCE.md 6-8)."""
from __future__ import annotations

import dataclasses
import json
import operator
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from topoaudio.analysis.controls import (
    POSITION_SHUFFLE_SEED,
    frequency_bands,
    layout_null_test,
    shuffled_positions,
    untrained_twin,
)
from topoaudio.analysis.maps import plot_sheet_map, plot_smoothness_curve
from topoaudio.analysis.stimuli import am_noise, log_spaced, pure_tones
from topoaudio.analysis.topography import (
    DEFAULT_N_PERMUTATIONS,
    morans_i_test,
    patches,
    smoothness,
    within_band,
)
from topoaudio.analysis.tuning import best_frequency, best_rate, selectivity
from topoaudio.brain.stats import ACCURACY_MARGIN, R2_MARGIN, holm, tost
from topoaudio.checkpoint import load_trained
from topoaudio.data.natsound165 import MUSIC, SPEECH, NatSound165, load_natsound165
from topoaudio.environment import environment
from topoaudio.models import tapped
from topoaudio.models.frontend import CochlearFrontend

TONE_FREQS = log_spaced(50.0, 8000.0, 40)
AM_RATES = log_spaced(2.0, 256.0, 8)


@torch.no_grad()
def layer_responses(model, sheets: dict, waveforms: torch.Tensor, device="cpu", batch_size: int = 16,
                    desc: str = "stimuli", prepare=None, readers: dict | None = None) -> dict:
    """{layer: unit responses [n_stimuli, N]} for every sheet, from one pass over the stimuli.

    prepare: waveforms [B, T] at 20 kHz (on `device`) -> the model's input (None: the waveforms);
    readers: {layer: its output -> activations as its sheet reads them} (None: the output itself).
    A response that is NaN or infinite is an error naming the layer and the stimuli."""
    model = model.to(device)
    chunks: dict[str, list] = {layer: [] for layer in sheets}
    for start in tqdm(range(0, len(waveforms), batch_size), desc=desc, leave=False):
        batch = waveforms[start:start + batch_size].to(device)
        with tapped(model, list(sheets)) as features:
            model(batch if prepare is None else prepare(batch))
        for layer, sheet in sheets.items():
            if layer not in features:
                raise ValueError(f"layer {layer!r} did not run in the model's forward pass ({desc})")
            output = features[layer] if readers is None else readers[layer](features[layer])
            chunks[layer].append(sheet.responses(output).float().cpu())
    responses = {layer: torch.cat(parts) for layer, parts in chunks.items()}
    for layer, values in responses.items():
        bad = ~torch.isfinite(values)
        if bad.any():
            stimulus, unit = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"layer {layer!r} gave {int(bad.sum())} NaN or infinite responses to the "
                             f"{desc} (the first: stimulus {stimulus}, unit {unit})")
    return responses


# Map name -> (what it maps, colour bar label). Tonotopy within bands: see controls.frequency_bands.
MAPS = {
    "tonotopy": "log2 best frequency (Hz)",
    "tonotopy_within_band": "log2 best frequency, row mean removed",
    "am_rate": "log2 best AM rate (Hz)",
    "music_vs_speech": "Welch t, music - speech",
}
# The primary family, named before the runs (docs/SCIENCE.md section 8): per layer, Moran's I of
# these maps with its two-sided permutation p, Holm-adjusted over the family; the rest is exploratory.
PRIMARY_MAPS = ("tonotopy_within_band", "am_rate", "music_vs_speech")
PRIMARY_STATISTIC = "morans_i"
CONDITIONS = ("trained", "untrained", "shuffled_positions")
# Moran's I with k = 8 nearest neighbours, as every map on docs/RESULTS.md was measured.
MORAN_NEIGHBOURS = 8
# Scalars of a map's statistics kept in metrics.json.
MAP_KEYS = ("smoothness", "null_mean", "null_interval", "p_value", "near_z", "near_p", "morans_i",
            "morans_i_z", "morans_i_p", "n_units", "n_dropped")


def _map_statistics(values, positions, shuffles: int, permutations: int,
                    seed: int) -> tuple[dict, dict | None]:
    """(scalars of MAP_KEYS, the full smoothness result for its figure, or None when fewer than 3
    units have a value: every statistic is then NaN and the units are counted as dropped)."""
    n_finite = int(torch.isfinite(values).sum())
    if n_finite < 3:
        nan = float("nan")
        return ({key: nan for key in MAP_KEYS} | {"null_interval": [nan, nan], "n_units": n_finite,
                                                   "n_dropped": values.numel() - n_finite}), None
    result = smoothness(values, positions, n_shuffles=shuffles, seed=seed)
    moran = morans_i_test(values, positions, k=MORAN_NEIGHBOURS, n_permutations=permutations, seed=seed)
    result.update(morans_i=moran["morans_i"], morans_i_z=moran["z"], morans_i_p=moran["p"])
    return {key: _scalar(result[key]) for key in MAP_KEYS}, result


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


def _responses(model, sheets: dict, natsound: NatSound165, device, label: str = "", prepare=None,
               readers: dict | None = None) -> dict:
    """{"tones" | "am" | "natural": {layer: responses [n_stimuli, N]}} of one model."""
    def run(waveforms, desc):
        return layer_responses(model, sheets, waveforms, device, desc=f"{desc}{label}", prepare=prepare,
                               readers=readers)

    return {"tones": run(pure_tones(TONE_FREQS), "tones"), "am": run(am_noise(AM_RATES), "AM noise"),
            "natural": run(natsound.waveforms, "natural sounds")}


def _maps(responses: dict, layer: str, sheet, categories) -> dict:
    """{map name: values [N]} of one layer; NaN marks a silent unit (tuning.silent_units)."""
    tonotopy = torch.log2(best_frequency(responses["tones"][layer], TONE_FREQS))
    bands = frequency_bands(sheet)
    return {
        "tonotopy": tonotopy,
        # a channels sheet builds in no frequency axis: its map is the tonotopy map itself (the same
        # tensor, so _condition_layers measures it once)
        "tonotopy_within_band": tonotopy if bands is None else within_band(tonotopy, bands),
        "am_rate": torch.log2(best_rate(responses["am"][layer], AM_RATES)),
        "music_vs_speech": selectivity(responses["natural"][layer], categories, set(MUSIC), set(SPEECH)),
    }


def _condition_layers(responses: dict, sheets: dict, natsound: NatSound165, shuffles: int,
                      permutations: int, seed: int, progress, condition: str, figures=None,
                      brain: dict | None = None) -> dict:
    """{layer: metrics} of one condition; figures: (out_dir, title suffix) to draw the maps; brain:
    {layer: component R^2 and RSA} (``_brain_scores``) to add to each layer's metrics."""
    layers = {}
    for layer, sheet in sheets.items():
        positions = sheet.positions
        if condition == "shuffled_positions":
            positions = shuffled_positions(positions)
        maps = _maps(responses, layer, sheet, natsound.categories)
        layer_metrics: dict = {"n_units": sheet.n_units,
                               "within_band": "frequency rows" if sheet.kind == "channel_freq" else "none"}
        measured = {}  # id(map) -> its statistics: a map that is another's tensor is measured once
        for name, values in maps.items():
            progress.set_postfix_str(f"{condition} {layer} {name}")
            if id(values) not in measured:
                measured[id(values)] = _map_statistics(values, positions, shuffles, permutations, seed)
            scalars, full = measured[id(values)]
            layer_metrics[name] = dict(scalars)
            if name in PRIMARY_MAPS and sheet.kind == "channel_freq":
                layout = layout_null_test(values, positions, sheet.n_channels, MORAN_NEIGHBOURS,
                                          permutations, seed)
                layer_metrics[name]["layout_null"] = {key: layout[key] for key in ("morans_i", "z", "p")}
            if figures is not None and full is not None:
                _draw(values, positions, full, name, layer, *figures)
            progress.update()
        layer_metrics["dropped_units"] = {name: layer_metrics[name]["n_dropped"] for name in maps}
        for kind, values in (("music", maps["music_vs_speech"]), ("speech", -maps["music_vs_speech"])):
            if int(torch.isfinite(values).sum()) == 0:
                layer_metrics[f"{kind}_patches"] = {"count": 0, "areas_mm2": []}
                continue
            found = patches(values, positions, threshold=2.0)
            layer_metrics[f"{kind}_patches"] = {"count": int(found["count"]),
                                                "areas_mm2": _scalar(found["areas_mm2"])}
        if brain is not None:
            layer_metrics.update(brain[layer])
        layers[layer] = layer_metrics
    return layers


def _brain_scores(natural: dict, natsound: NatSound165, label: str = "") -> dict:
    """{layer: {"component_r2": {component: median R^2}, "rsa_components": rho}} from the layers'
    responses to the natural sounds."""
    from topoaudio.brain import predict_components, rsa

    scores = {}
    # one layer at a time, so that the cross-validated ridge (seconds per layer) shows progress
    for layer in tqdm(natural, desc=f"component R²{label}", leave=False):
        r2 = predict_components(natural[layer], natsound.components)["median_r2"]
        scores[layer] = {"component_r2": dict(zip(natsound.component_names, _scalar(r2), strict=True)),
                         "rsa_components": float(rsa(natural[layer], natsound.components))}
    return scores


def _draw(values, positions, stats: dict, name: str, layer: str, out: pathlib.Path, title: str) -> None:
    label = MAPS[name]
    finite = values[torch.isfinite(values)]
    diverging = name == "music_vs_speech"
    # a diverging map is centred on t = 0, so white means "no preference", not "mid-range"
    limit = float(finite.abs().max()) if diverging else None
    plot_sheet_map(values, positions, out / f"{layer}_{name}.png", f"{layer}: {name} ({title})",
                   cmap="RdBu_r" if diverging else "viridis", label=label,
                   vmin=-limit if diverging else None, vmax=limit)
    plot_smoothness_curve(stats, out / f"{layer}_{name}_smoothness.png", f"{layer}: {name} smoothness",
                          value_label=label)


def primary_tests(layers: dict) -> list[dict]:
    """The primary family of one condition: per layer and PRIMARY_MAPS map, Moran's I, its z and
    two-sided permutation p, and p Holm-adjusted over the family (docs/SCIENCE.md section 8)."""
    tests = [{"layer": layer, "map": name, "morans_i": m[name]["morans_i"], "z": m[name]["morans_i_z"],
              "p": m[name]["morans_i_p"]} for layer, m in layers.items() for name in PRIMARY_MAPS]
    # a constant (or all-silent) map has no test to make: NaN p, left out of the family's count
    adjusted = holm([None if test["p"] != test["p"] else test["p"] for test in tests])
    for test, p_holm in zip(tests, adjusted, strict=True):
        test["p_holm"] = p_holm
    # channel_freq sheets: the same maps against the layout null (controls.layout_null_test), Holm
    # over the same family
    layouts = [layers[t["layer"]][t["map"]].get("layout_null") for t in tests]
    if any(layout is not None for layout in layouts):
        ps = [None if layout is None or layout["p"] != layout["p"] else layout["p"] for layout in layouts]
        for test, layout, p_holm in zip(tests, layouts, holm(ps), strict=True):
            if layout is not None:
                test.update(layout_z=layout["z"], layout_p=layout["p"], layout_p_holm=p_holm)
    return tests


def final_val_accuracy(checkpoint_path) -> float | dict | None:
    """The last validation accuracy (a fraction) in the metrics.jsonl beside a checkpoint: a number,
    or for a multi-task run {task: fraction} (tasks without labelled validation clips left out);
    None when the run wrote none."""
    path = pathlib.Path(checkpoint_path).with_name("metrics.jsonl") if checkpoint_path else None
    if path is None or not path.is_file():
        return None
    accuracy = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by an interrupted run
        value = record.get("val_accuracy") if isinstance(record, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            accuracy = float(value)
        elif isinstance(value, dict):
            accuracy = {task: float(v) for task, v in value.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)} or None
    return accuracy


@torch.no_grad()
def cochleagram_baseline(natsound: NatSound165, batch_size: int = 16) -> dict:
    """Component R^2 and RSA of each sound's time-averaged cochleagram (211 numbers, the model
    cochlea's long-term spectrum, no network): the floor a layer has to beat to be said to add
    anything to brain predictivity."""
    frontend = CochlearFrontend()
    spectra = torch.cat([frontend(batch).squeeze(1).mean(dim=-1)
                         for batch in tqdm(natsound.waveforms.split(batch_size),
                                           desc="time-averaged cochleagram", leave=False)])
    return _brain_scores({"cochleagram": spectra}, natsound, " (cochleagram)")["cochleagram"]


@dataclasses.dataclass
class Subject:
    """One model to measure, however it came: a checkpoint (``checkpoint_subject``) or a model a
    user built (``analysis.any_model.measure_model``). Both go through ``measure_subject``.

    model: the network, in eval mode; sheets: {layer: CorticalSheet} (what a unit is, where it
    sits); untrained: a zero-argument callable building its untrained control, in eval mode, with
    the same layers; info: labels copied to the top of its metrics (checkpoint, model, topo, seed,
    sheet, val_accuracy, ...); seed: seeds the nulls; title: the figures' subtitle; prepare and
    readers: as in ``layer_responses`` (None for topoaudio's own models)."""

    model: torch.nn.Module
    sheets: dict
    untrained: Callable[[], torch.nn.Module]
    info: dict
    seed: int = 0
    title: str = ""
    prepare: Callable | None = None
    readers: dict | None = None


def frontend_description(model: torch.nn.Module) -> str:
    """The cochleagram a model was measured through: "exact" or "fast (oversample 4)"."""
    cochleagram = model.frontend.cochleagram
    if cochleagram.mode == "exact":
        return "exact"
    return f"{cochleagram.mode} (oversample {cochleagram.oversample:g})"


def checkpoint_subject(trained: tuple, source: str = "") -> Subject:
    """The Subject of one loaded checkpoint (model, sheets, config: checkpoint.load_trained),
    labelled with `source` (its path); its control is ``controls.untrained_twin(config)``."""
    model, sheets, config = trained
    info = {"checkpoint": source, **{key: config[key] for key in ("model", "topo", "seed")},
            "sheet": config.get("sheet"), "val_accuracy": final_val_accuracy(source),
            "frontend": frontend_description(model)}
    return Subject(model, sheets, lambda: untrained_twin(config), info, config["seed"],
                   f"{config['topo']}, seed {config['seed']}")


def measure_subject(subject: Subject, natsound: NatSound165, out_dir, device="cpu", shuffles: int = 100,
                    permutations: int = DEFAULT_N_PERMUTATIONS) -> dict:
    """Every measurement of one model and its two controls (controls.py): the untrained network on
    the same sheets, and the model's responses on shuffled positions; each primary test of the
    model is marked with what the controls say (``attribute``). Figures of the model's maps under
    out_dir; returns the metrics."""
    sheets = subject.sheets
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"prepare": subject.prepare, "readers": subject.readers}
    responses = {"trained": _responses(subject.model, sheets, natsound, device, **settings)}
    responses["untrained"] = _responses(subject.untrained(), sheets, natsound, device, " (untrained)",
                                        **settings)
    responses["shuffled_positions"] = responses["trained"]
    # positions do not enter the regression: the shuffled-positions control has the trained scores
    brain = {"trained": _brain_scores(responses["trained"]["natural"], natsound),
             "untrained": _brain_scores(responses["untrained"]["natural"], natsound, " (untrained)"),
             "shuffled_positions": None}
    metrics = {**subject.info, "position_shuffle_seed": POSITION_SHUFFLE_SEED,
               "moran_neighbours": MORAN_NEIGHBOURS, "permutations": permutations,
               "primary_maps": list(PRIMARY_MAPS), "controls": {}}
    progress = tqdm(total=len(CONDITIONS) * len(sheets) * len(MAPS), desc="map statistics", leave=False)
    for condition in CONDITIONS:
        figures = (out, subject.title) if condition == "trained" else None
        layers = _condition_layers(responses[condition], sheets, natsound, shuffles, permutations,
                                   subject.seed, progress, condition, figures, brain[condition])
        entry = {"layers": layers, "primary": primary_tests(layers)}
        if condition == "trained":
            metrics.update(entry)
        else:
            metrics["controls"][condition] = entry
    progress.close()
    attribute(metrics["primary"], {name: entry["primary"] for name, entry in metrics["controls"].items()})
    return metrics


def evaluate_checkpoint(trained: tuple, natsound: NatSound165, out_dir, device="cpu", shuffles: int = 100,
                        source: str = "", permutations: int = DEFAULT_N_PERMUTATIONS) -> dict:
    """``measure_subject`` of one loaded checkpoint (model, sheets, config: checkpoint.load_trained),
    labelled with `source` (the checkpoint's path)."""
    return measure_subject(checkpoint_subject(trained, source), natsound, out_dir, device, shuffles,
                           permutations)


# A primary test is significant when its Holm-adjusted p is below this.
SIGNIFICANCE = 0.05


def _significant(test: dict) -> bool:
    p = test.get("p_holm")
    return p is not None and p == p and p < SIGNIFICANCE


def attribute(primary: list[dict], controls: dict) -> None:
    """Marks each primary test of the model (in place) with "flagged_by": the controls ({name:
    their primary tests}) whose same layer and map is significant with the same sign of z, and on
    channel_freq sheets "sheet layout" when the map is not significant (Holm) with that sign against
    the layout null (controls.layout_null_test: the arrangement of the channels adds nothing to what
    the layout builds in); and a "verdict": "model" (significant, and nothing flags it: the one
    result credited to the model), "flagged by controls" (significant, but the sheet, the
    architecture or the statistic gives it, not what the model learned) or "not significant"."""
    by_control = {name: {(t["layer"], t["map"]): t for t in tests} for name, tests in controls.items()}
    for test in primary:
        flagged = []
        if _significant(test):
            for name, tests in by_control.items():
                other = tests.get((test["layer"], test["map"]))
                if other is not None and _significant(other) and (other["z"] > 0) == (test["z"] > 0):
                    flagged.append(name)
            if "layout_p_holm" in test and not (_significant({"p_holm": test["layout_p_holm"]})
                                                and (test["layout_z"] > 0) == (test["z"] > 0)):
                flagged.append("sheet layout")
        test["flagged_by"] = flagged
        test["verdict"] = ("not significant" if not _significant(test)
                           else "flagged by controls" if flagged else "model")


def compared_pairs(groups) -> list[tuple[str, str]]:
    """(setting, baseline) pairs to test: every setting against "none" when a "none" group exists
    (the loss's effect is measured against no loss, never setting against setting), else the two
    groups in name order; none with fewer than two groups or several groups and no "none"."""
    names = sorted(groups)
    if "none" in names and len(names) > 1:
        return [(name, "none") for name in names if name != "none"]
    return [(names[0], names[1])] if len(names) == 2 else []


def summarise(runs: list[dict]) -> dict:
    """Mean and spread per group (the topo setting) of every scalar of the trained models, and per
    compared pair (compared_pairs) a Welch test and, for accuracy and component R^2, an equivalence
    test: {measure: {group: {mean, sd, n}, "family", "comparisons": {"a - b": {"compared": [a, b],
    "welch_t", "p", "p_holm", "tost"}}}}, t = (a - b) / standard error.

    "family" is "primary" for Moran's I of the PRIMARY_MAPS maps and "exploratory" otherwise; p_holm
    adjusts p within its family over every measure and pair (Holm). "tost" (brain.stats.tost,
    a - b) uses the margins ACCURACY_MARGIN / R2_MARGIN: parity is claimed from it, never from a
    large Welch p."""
    from scipy import stats as scipy_stats

    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(group_of(run), []).append(run)
    measures: dict[str, dict[str, list[float]]] = {}
    for group, members in groups.items():
        for run in members:
            for key, value in _flatten(run).items():
                if value is not None and value == value:  # NaN (a silent map) has no mean to compare
                    measures.setdefault(key, {}).setdefault(group, []).append(value)
    summary = {}
    for key, by_group in measures.items():
        entry = {g: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                     "n": len(v)} for g, v in by_group.items()}
        entry["family"] = "primary" if _is_primary(key) else "exploratory"
        entry["comparisons"] = {}
        for first, second in compared_pairs(by_group):
            a, b = by_group[first], by_group[second]
            if len(a) < 2 or len(b) < 2:
                continue
            test = {"compared": [first, second], "welch_t": None, "p": None}
            if np.std(a) > 0 or np.std(b) > 0:  # no spread within either group: t is undefined, not 0
                welch = scipy_stats.ttest_ind(a, b, equal_var=False)
                test["welch_t"], test["p"] = float(welch.statistic), float(welch.pvalue)
            margin = _parity_margin(key)
            if margin is not None:
                test["tost"] = tost(a, b, margin)
            entry["comparisons"][f"{first} - {second}"] = test
        summary[key] = entry
    for family in ("primary", "exploratory"):
        tests = [test for entry in summary.values() if entry["family"] == family
                 for test in entry["comparisons"].values()]
        for test, p_holm in zip(tests, holm([test["p"] for test in tests]), strict=True):
            test["p_holm"] = p_holm
    return summary


def group_of(run: dict) -> str:
    """The group a run is compared in: its checkpoint's topo setting, else (a user's model) its
    model's name."""
    return run["topo"] if run.get("topo") is not None else str(run.get("model"))


def _is_primary(key: str) -> bool:
    parts = key.split("/")
    return len(parts) == 3 and parts[1] in PRIMARY_MAPS and parts[2] == PRIMARY_STATISTIC


def _parity_margin(key: str) -> float | None:
    if key == "val_accuracy" or key.startswith("val_accuracy/"):
        return ACCURACY_MARGIN
    if key.split("/")[-1].startswith("r2_"):
        return R2_MARGIN
    return None


def _flatten(run: dict) -> dict:
    flat = {}
    accuracy = run.get("val_accuracy")
    if isinstance(accuracy, dict):  # a multi-task run: one parity test per task
        flat.update({f"val_accuracy/{task}": value for task, value in accuracy.items()})
    elif accuracy is not None:
        flat["val_accuracy"] = accuracy
    for layer, values in run["layers"].items():
        for name in MAPS:
            if name not in values:  # metrics written before the within-band map existed
                continue
            for statistic in ("smoothness", "morans_i", "near_z"):
                if statistic in values[name]:
                    flat[f"{layer}/{name}/{statistic}"] = values[name][statistic]
        for kind in ("music", "speech"):
            flat[f"{layer}/{kind}_patches"] = values[f"{kind}_patches"]["count"]
        for component, r2 in values["component_r2"].items():
            flat[f"{layer}/r2_{component}"] = r2
    return flat


def _number(x, spec: str) -> str:
    return "n/a" if x is None or x != x else format(x, spec)


def _run_lines(index: int, run: dict) -> list[str]:
    if run.get("checkpoint"):
        frontend = f", front end: {run['frontend']}" if run.get("frontend") else ""
        title = (f"{run['checkpoint']} ({run['model']}, topo={run['topo']}, seed {run['seed']}"
                 f"{frontend})")
    else:  # a user's model (analysis.any_model)
        rate = f" at {run['sample_rate']} Hz" if run.get("sample_rate") else ""
        title = (f"{run.get('source') or run['model']} ({run['model']}, input: {run.get('input')}{rate}; "
                 f"untrained control: {run.get('untrained_control')}; seed {run['seed']})")
    lines = [f"## {title}", "",
             "| layer | units | tonotopy smooth. (null 95 %) | AM smooth. | music/speech smooth. | "
             "Moran's I (BF) | music / speech patches | median R² speech | median R² music |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for layer, m in run["layers"].items():
        tono = m["tonotopy"]
        null = tono.get("null_interval", [float("nan")] * 2)
        r2 = m["component_r2"]
        lines.append(f"| {layer} | {m['n_units']} | {_number(tono['smoothness'], '.3f')} "
                     f"({_number(null[0], '.3f')}-{_number(null[1], '.3f')}) | "
                     f"{_number(m['am_rate']['smoothness'], '.3f')} | "
                     f"{_number(m['music_vs_speech']['smoothness'], '.3f')} | "
                     f"{_number(tono['morans_i'], '.3f')} | "
                     f"{m['music_patches']['count']} / {m['speech_patches']['count']} | "
                     f"{_number(r2.get('speech'), '.3f')} | {_number(r2.get('music'), '.3f')} |")
    controls = run.get("controls", {})
    conditions = [("trained", run)] + [(name, controls[name]) for name in CONDITIONS[1:] if name in controls]
    if run.get("layouts"):
        lines += ["", "Layers: " + "; ".join(
            f"`{layer}` {layout}, {run['layers'][layer]['n_units']} units on a "
            f"{run['sheet'][layer]} sheet ({run['positions'][layer]} positions)"
            for layer, layout in run["layouts"].items()) + "."]
    if "primary" in run:
        lines += ["", f"**Primary measures** (Moran's I, k = {run.get('moran_neighbours', 8)} nearest "
                  f"units; z and two-sided p against {run.get('permutations')} permutations; Holm over "
                  "the family of each condition). Controls: the untrained network (same architecture, "
                  "sheets and seed) and the trained responses on positions shuffled with seed "
                  f"{run.get('position_shuffle_seed')}.", "",
                  "| layer | map | " + " | ".join(f"{name}: I (z) p / Holm p" for name, _ in conditions)
                  + " | layout null: (z) p / Holm p | verdict |",
                  "|---|---|" + "---:|" * (len(conditions) + 1) + "---|"]
        by_condition = [{(t["layer"], t["map"]): t for t in entry["primary"]} for _, entry in conditions]
        for test in run["primary"]:
            cells = []
            for tests in by_condition:
                t = tests[(test["layer"], test["map"])]
                cells.append(f"{_number(t['morans_i'], '.3f')} ({_number(t['z'], '.1f')}) "
                             f"{_number(t['p'], '.3g')} / {_number(t['p_holm'], '.3g')}")
            layout = (f"({_number(test['layout_z'], '.1f')}) {_number(test['layout_p'], '.3g')} / "
                      f"{_number(test['layout_p_holm'], '.3g')}" if "layout_p" in test else "n/a")
            verdict = test.get("verdict", "")
            if test.get("flagged_by"):
                verdict += ": " + ", ".join(test["flagged_by"])
            lines.append(f"| {test['layer']} | {test['map']} | " + " | ".join(cells)
                         + f" | {layout} | {verdict} |")
        if any("verdict" in test for test in run["primary"]):
            credited = [f"{t['layer']} {t['map']}" for t in run["primary"] if t["verdict"] == "model"]
            flagged = [f"{t['layer']} {t['map']}" for t in run["primary"]
                       if t["verdict"] == "flagged by controls"]
            lines += ["", f"Verdict: a result is the model's only when it is significant (Holm p < "
                      f"{SIGNIFICANCE}), neither control shows it with the same sign, and on "
                      "channel_freq sheets it is significant against the layout null too (the "
                      "channels' places permuted alike in every row: what the sheet builds in is "
                      "kept, only the arrangement is lost). Credited to "
                      f"the model: {len(credited)} of {len(run['primary'])}"
                      + (f" ({', '.join(credited)})" if credited else "") + ". Flagged by a control, so "
                      f"not the model's: {len(flagged)}" + (f" ({', '.join(flagged)})" if flagged else "")
                      + "."]
        lines += ["", "*Exploratory*: smoothness (nearest-bin z, > 0: neighbours more alike than "
                  "chance) per condition, and units dropped as silent (no value) per map.", "",
                  "| layer | map | " + " | ".join(f"{name}: smooth. (near z)" for name, _ in conditions)
                  + " | dropped units " + " / ".join(name for name, _ in conditions) + " |",
                  "|---|---|" + "---:|" * (len(conditions) + 1)]
        for layer in run["layers"]:
            for name in MAPS:
                cells = [f"{_number(entry['layers'][layer][name]['smoothness'], '.3f')} "
                         f"({_number(entry['layers'][layer][name]['near_z'], '.1f')})"
                         for _, entry in conditions]
                dropped = " / ".join(str(entry["layers"][layer]["dropped_units"][name])
                                     for _, entry in conditions)
                lines.append(f"| {layer} | {name} | " + " | ".join(cells) + f" | {dropped} |")
    lines.append("")
    for layer in run["layers"]:
        images = " ".join(f"![{layer} {name}](run{index}/{layer}_{name}.png)"
                          for name in ("tonotopy", "am_rate", "music_vs_speech"))
        lines += [images, ""]
    return lines


def write_report(out_dir, runs: list[dict], summary: dict, baselines: dict | None = None) -> pathlib.Path:
    """report.md: one section per checkpoint (trained and controls side by side, figures), then the
    group comparison: primary family, equivalence tests, exploratory measures."""
    out = pathlib.Path(out_dir)
    lines = ["# topoaudio evaluation", "",
             "Read the maps against their controls, not against zero: on `channel_freq` sheets the "
             "frequency rows of a conv map are laid along the sheet's y axis by construction, so plain "
             "tonotopy exists in every model, trained or not; `tonotopy_within_band` removes each row's "
             "mean first. Smoothness is >= 0 by definition; Moran's I and the nearest-bin z are signed "
             "(< 0: neighbours less alike than chance). Silent units (no response to the probes) have "
             "no value and are left out of every statistic; their counts are listed.", ""]
    if baselines:
        components = list(next(iter(baselines.values()))["component_r2"])
        lines += ["## Baselines without a trained network", "",
                  "Median cross-validated R² of each NH2015 component (and RSA) predicted from inputs "
                  "no training shaped: compare every layer's R² with these and with the untrained "
                  "control below.", "",
                  "| baseline | " + " | ".join(f"R² {c}" for c in components) + " | RSA |",
                  "|---|" + "---:|" * (len(components) + 1)]
        for name, scores in baselines.items():
            lines.append(f"| time-averaged {name} | "
                         + " | ".join(f"{_number(r2, '.3f')}" for r2 in scores["component_r2"].values())
                         + f" | {_number(scores['rsa_components'], '.3f')} |")
        lines.append("")
    for index, run in enumerate(runs):
        lines += _run_lines(index, run)
    if len(runs) > 1:
        lines += _summary_lines(summary)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _summary_lines(summary: dict) -> list[str]:
    def groups_of(entry):
        return "; ".join(f"{g}: {v['mean']:.3f} ± {v['sd']:.3f} (n={v['n']})"
                         for g, v in entry.items() if isinstance(v, dict) and "mean" in v)

    def tests(family=None, parity=False):
        for key, entry in summary.items():
            if family is not None and entry.get("family", "exploratory") != family:
                continue
            for pair, test in entry.get("comparisons", {}).items():
                if not parity or "tost" in test:
                    yield key, entry, pair, test

    lines = []
    for family, title in (("primary", "Primary family (Moran's I of the primary maps)"),
                          ("exploratory", "Exploratory measures")):
        lines += [f"## Across checkpoints: {title} (mean ± sd; Welch t-tests against `none`)", "",
                  "t = (setting - baseline) / standard error; n/a where neither group varies. "
                  f"Holm p adjusts p over every measure and pair of the {family} family.", "",
                  "| measure | groups | pair | t | p | Holm p |", "|---|---|---|---:|---:|---:|"]
        for key, entry, pair, test in tests(family):
            lines.append(f"| {key} | {groups_of(entry)} | {pair} | {_number(test['welch_t'], '.2f')} | "
                         f"{_number(test['p'], '.3g')} | {_number(test.get('p_holm'), '.3g')} |")
        lines.append("")
    equivalence = list(tests(parity=True))
    if equivalence:
        lines += ["## Parity: equivalence tests (TOST, Welch)", "",
                  "Equivalent means: the 90 % interval of the difference (setting - baseline) lies "
                  "inside ± margin (TOST p < 0.05); a non-significant Welch test is not evidence of "
                  "parity. n/a: neither group varies, so no test is possible.", "",
                  "| measure | groups | difference | 90 % interval | margin | TOST p | equivalent |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for key, entry, pair, test in equivalence:
            parity = test["tost"]
            interval = ("n/a" if parity["interval"] is None
                        else f"{parity['interval'][0]:.3f} to {parity['interval'][1]:.3f}")
            verdict = {True: "yes", False: "no", None: "n/a"}[parity["equivalent"]]
            lines.append(f"| {key} | {groups_of(entry)} | {pair}: {parity['difference']:.3f} | "
                         f"{interval} | {parity['margin']:.3f} | {_number(parity['p'], '.3g')} | {verdict} |")
        lines.append("")
    return lines


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


def count_of_shuffles(shuffles, name: str = "shuffles") -> int:
    """A null's shuffle (or permutation) count: an integer >= 1 (a null needs one draw at least)."""
    try:
        count = operator.index(shuffles)  # ints (NumPy's too), not floats or strings
    except TypeError:
        count = 0
    if count < 1 or isinstance(shuffles, bool):
        raise ValueError(f"{name} must be an integer >= 1, got {shuffles!r}")
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


def writable_file(path) -> pathlib.Path:
    """path for an output file, checked before any work: not a directory, its directory created if
    needed and proven writable (writable_directory), and the file itself writable if it exists."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise ValueError(f"output file {path} is a directory; name a file")
    writable_directory(path.parent)
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"output file {path} exists and cannot be written")
    return path


def evaluate_checkpoints(checkpoints: list, natsound_dir, out_dir, device="cpu", shuffles: int = 100,
                         permutations: int = DEFAULT_N_PERMUTATIONS, sheet: str | None = None) -> dict:
    """Evaluate checkpoints; writes out_dir/run<i>/*.png, metrics.json and report.md. `sheet`: lay
    runs trained without sheets of their own on this kind (checkpoint.load_trained).

    Everything that can be wrong with the inputs is found before the first measurement, in order
    of cost: the settings, the output directory, every natsound165 file, then every checkpoint
    (all loaded first). Errors are ValueError / FileNotFoundError naming the setting or file."""
    shuffles = count_of_shuffles(shuffles)
    permutations = count_of_shuffles(permutations, "permutations")
    device = usable_device(device)
    paths = [pathlib.Path(p) for p in checkpoints]
    if not paths:
        raise ValueError("no checkpoint to evaluate")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint(s) not found: {missing}")
    out = writable_directory(out_dir)
    natsound = load_natsound165(natsound_dir)
    trained = [load_trained(path, sheet=sheet)
               for path in tqdm(paths, desc="loading checkpoints", leave=False)]
    subjects = [checkpoint_subject(model, str(path)) for path, model in zip(paths, trained, strict=True)]
    return measure_subjects(subjects, natsound, out, device, shuffles, permutations, desc="checkpoints")


def measure_subjects(subjects: list[Subject], natsound: NatSound165, out_dir, device="cpu",
                     shuffles: int = 100, permutations: int = DEFAULT_N_PERMUTATIONS,
                     desc: str = "models") -> dict:
    """``measure_subject`` of each subject, their summary across groups and the no-network baseline:
    out_dir/run<i>/*.png, metrics.json and report.md. Everything is written to a staging directory
    inside out_dir first and moved into place only once all of it is done (the figures, then
    metrics.json, then report.md, each by a rename), so whatever a model does (an error, NaN, an
    interrupt) never leaves a half-written or mismatched report; an old report stays as it was.
    Returns {"runs", "summary", "baselines", "report" (its path)}."""
    out = pathlib.Path(out_dir)
    stage = pathlib.Path(tempfile.mkdtemp(prefix=".measuring-", dir=out))
    try:
        runs = [measure_subject(subject, natsound, stage / f"run{index}", device, shuffles, permutations)
                for index, subject in enumerate(tqdm(subjects, desc=desc))]
        summary = summarise(runs)
        baselines = {"cochleagram": cochleagram_baseline(natsound)}
        (stage / "metrics.json").write_text(json.dumps({"runs": runs, "summary": summary,
                                                        "baselines": baselines,
                                                        "environment": environment()}, indent=2))
        write_report(stage, runs, summary, baselines)
        _move_into(stage, out, last=("metrics.json", "report.md"))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"runs": runs, "summary": summary, "baselines": baselines, "report": str(out / "report.md")}


def _move_into(stage: pathlib.Path, out: pathlib.Path, last: tuple[str, ...]) -> None:
    """Every entry of stage renamed into out (a directory replaces the one of its name), the names
    in `last` last and in that order. Renames within one directory tree: no copy, no partial file."""
    entries = sorted(stage.iterdir(), key=lambda path: (path.name in last,
                                                        last.index(path.name) if path.name in last else 0))
    for entry in entries:
        target = out / entry.name
        if entry.is_dir():
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        os.replace(entry, target)
