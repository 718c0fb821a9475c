"""The pre-registered study of issue 21 (docs/SCIENCE.md section 8, last bullet): five claims, one
number per run and claim, one test per claim, Holm over the five, `spatial` against `none`; the same
five tests for `topoloss` against `none` are exploratory (Holm within those five).

The numbers are read from the metrics dicts that ``python -m topoaudio.evaluate`` writes
(metrics.json: runs / summary / baselines), from the trained condition of each run (``run["layers"]``;
the untrained and shuffled-position controls under ``run["controls"]`` are not used):

1. ``tonotopy_within_band``, 2. ``am_rate``, 3. ``music_vs_speech``: Moran's I of the map
   (``run["layers"][layer][map]["morans_i"]``), mean over LAYERS; Welch, two-sided.
4. ``accuracy``: mean of the final validation accuracies (fractions) of TASKS
   (``run["val_accuracy"][task]``, the last validation line of the run's metrics.jsonl); TOST with
   margin ACCURACY_MARGIN (2 points).
5. ``component_r2``: mean over LAYERS and the six COMPONENTS of ``run["layers"][layer]
   ["component_r2"][component]``; TOST with margin R2_MARGIN.

Choice (component R^2). The registered wording is "median R^2 of the six NH2015 components, mean over
block2-4 and components". What evaluation stores (``_brain_scores``, ``brain.predict_components``) per
layer and component is already a median: the median over the 10 train/test splits of the test R^2
of that component (SCIENCE.md section 7). We read "median R^2" as that stored number and take the
plain mean of the 18 stored medians (3 layers x 6 components), because the words say the mean runs
over components as well as layers; the other reading, a median across the six components, would leave
no components to average over and contradicts "mean over ... components".

Outcomes. The family p of a claim is its registered test's p (Welch two-sided for the maps; for
parity the TOST p, the larger of its two one-sided Welch p values), Holm-adjusted over the five
(brain.stats.holm; a claim with no test because neither group varies counts in the family with p = 1,
so the family stays five, and is reported n/a). A map claim is "a difference shown" when its Holm p
< ALPHA, else "not shown". A parity claim is "equivalence shown" when its Holm TOST p < ALPHA, "a
difference shown" when its Welch two-sided p, Holm-adjusted in the same family of five in place of
that claim's TOST p, is < ALPHA, else "neither shown" (both at once is possible only for a difference
inside the margin, and is reported as both).
"""
from __future__ import annotations

import math
import pathlib

from topoaudio.analysis.evaluation import PRIMARY_STATISTIC, group_of
from topoaudio.brain.stats import ACCURACY_MARGIN, R2_MARGIN, holm, tost
from topoaudio.data.nh2015_files import COMPONENTS

LAYERS = ("block2", "block3", "block4")
TASKS = ("word", "speaker", "instrument", "category")
MAP_CLAIMS = ("tonotopy_within_band", "am_rate", "music_vs_speech")
PARITY_MARGINS = {"accuracy": ACCURACY_MARGIN, "component_r2": R2_MARGIN}
CLAIMS = (*MAP_CLAIMS, *PARITY_MARGINS)
TITLES = {
    "tonotopy_within_band": "tonotopy within bands (Moran's I, mean block2-4)",
    "am_rate": "AM rate (Moran's I, mean block2-4)",
    "music_vs_speech": "music vs speech (Moran's I, mean block2-4)",
    "accuracy": "task accuracy parity (mean of the tasks' final validation accuracies)",
    "component_r2": "component R² parity (mean over block2-4 and the six components)",
}
PRIMARY = ("spatial", "none")  # (setting, baseline) of the registered family
EXPLORATORY = ("topoloss", "none")
ALPHA = 0.05


def runs_of(metrics) -> list[dict]:
    """The runs of a metrics dict (metrics.json of topoaudio.evaluate), or of a list of runs."""
    runs = metrics.get("runs") if isinstance(metrics, dict) else metrics
    if not isinstance(runs, list) or not all(isinstance(run, dict) for run in runs):
        raise ValueError("expected a metrics dict with a list of runs under 'runs' (metrics.json of "
                         "python -m topoaudio.evaluate)")
    return runs


def run_name(run: dict) -> str:
    """A run's name: its checkpoint's directory (e.g. none-seed0), else its group and seed."""
    checkpoint = run.get("checkpoint")
    if checkpoint:
        return pathlib.PurePath(checkpoint).parent.name or str(checkpoint)
    return f"{group_of(run)}-seed{run.get('seed')}"


def _finite(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} is {value!r}, not a finite number")
    return float(value)


def _layer(run: dict, layer: str) -> dict:
    layers = run.get("layers")
    if not isinstance(layers, dict) or layer not in layers:
        have = ", ".join(layers) if isinstance(layers, dict) else "none"
        raise ValueError(f"run {run_name(run)} has no layer {layer!r} (its layers: {have})")
    return layers[layer]


def map_number(run: dict, name: str, layers=LAYERS) -> float:
    """Moran's I of map `name` in the trained condition, mean over `layers`."""
    values = []
    for layer in layers:
        metrics = _layer(run, layer)
        if not isinstance(metrics.get(name), dict) or PRIMARY_STATISTIC not in metrics[name]:
            raise ValueError(f"run {run_name(run)} layer {layer} has no map {name!r} with "
                             f"{PRIMARY_STATISTIC}")
        values.append(_finite(metrics[name][PRIMARY_STATISTIC],
                              f"run {run_name(run)} layer {layer} map {name} {PRIMARY_STATISTIC}"))
    return sum(values) / len(values)


def accuracy_number(run: dict, tasks=TASKS) -> float:
    """Mean of the final validation accuracies (fractions) of `tasks`."""
    accuracy = run.get("val_accuracy")
    if not isinstance(accuracy, dict):
        raise ValueError(f"run {run_name(run)} has no per-task validation accuracy (val_accuracy is "
                         f"{accuracy!r})")
    missing = [task for task in tasks if task not in accuracy]
    if missing:
        raise ValueError(f"run {run_name(run)} has no validation accuracy of task(s) {missing} (its "
                         f"tasks: {list(accuracy)})")
    values = [_finite(accuracy[task], f"run {run_name(run)} val_accuracy {task}") for task in tasks]
    return sum(values) / len(values)


def component_r2_number(run: dict, layers=LAYERS, components=COMPONENTS) -> float:
    """Mean over `layers` and `components` of the stored component R^2 (each the median over the
    cross-validation splits) of the trained condition."""
    values = []
    for layer in layers:
        r2 = _layer(run, layer).get("component_r2")
        if not isinstance(r2, dict):
            raise ValueError(f"run {run_name(run)} layer {layer} has no component_r2")
        missing = [c for c in components if c not in r2]
        if missing:
            raise ValueError(f"run {run_name(run)} layer {layer} has no component R² of {missing}")
        values += [_finite(r2[c], f"run {run_name(run)} layer {layer} component R² {c}")
                   for c in components]
    return sum(values) / len(values)


def claim_numbers(run: dict, tasks=TASKS) -> dict:
    """{claim: the run's number} for the five CLAIMS."""
    numbers = {name: map_number(run, name) for name in MAP_CLAIMS}
    numbers["accuracy"] = accuracy_number(run, tasks)
    numbers["component_r2"] = component_r2_number(run)
    return numbers


def per_run(metrics, tasks=TASKS) -> list[dict]:
    """One row per run: {"run", "group", "seed", "sheet", claim: number...}, in the file's order. A
    group and seed twice is an error (the same run counted twice)."""
    rows, seen = [], set()
    for run in runs_of(metrics):
        key = (group_of(run), run.get("seed"))
        if key in seen:
            raise ValueError(f"group {key[0]!r} seed {key[1]} appears twice ({run_name(run)})")
        seen.add(key)
        rows.append({"run": run_name(run), "group": key[0], "seed": key[1], "sheet": run.get("sheet"),
                     **claim_numbers(run, tasks)})
    return rows


def group_values(rows: list[dict], group: str) -> dict:
    """{claim: [numbers of `group`'s runs]}; at least 2 runs, else a ValueError."""
    members = [row for row in rows if row["group"] == group]
    if not members:
        have = ", ".join(sorted({row["group"] for row in rows})) or "none"
        raise ValueError(f"no runs of group {group!r} (groups present: {have})")
    if len(members) < 2:
        raise ValueError(f"group {group!r} has {len(members)} run; a Welch test needs at least 2 per group")
    return {claim: [row[claim] for row in members] for claim in CLAIMS}


def welch(a: list, b: list) -> dict:
    """Welch's two-sided t-test of mean(a) - mean(b): {"t", "p"}; both None when neither varies."""
    from scipy import stats as scipy_stats

    if _spread(a) == 0 and _spread(b) == 0:
        return {"t": None, "p": None}
    result = scipy_stats.ttest_ind(a, b, equal_var=False)
    return {"t": float(result.statistic), "p": float(result.pvalue)}


def _spread(values: list) -> float:
    return max(values) - min(values)


def _mean(values: list) -> float:
    return sum(values) / len(values)


def compare(claim: str, a: list, b: list) -> dict:
    """One claim's test of a (the setting's numbers) against b (the baseline's): means, difference,
    the Welch test, and for a parity claim the TOST (brain.stats.tost); "p" is the registered test's
    p (Welch for a map claim, TOST for a parity claim)."""
    if claim not in CLAIMS:
        raise ValueError(f"unknown claim {claim!r}; the claims are {list(CLAIMS)}")
    test = {"claim": claim, "n": [len(a), len(b)], "mean_setting": _mean(a), "mean_baseline": _mean(b),
            "difference": _mean(a) - _mean(b)}
    result = welch(a, b)
    test.update(welch_t=result["t"], welch_p=result["p"])
    if claim in PARITY_MARGINS:
        test.update(test="TOST (Welch)", margin=PARITY_MARGINS[claim])
        test["tost"] = tost(a, b, PARITY_MARGINS[claim], ALPHA)
        test["p"] = test["tost"]["p"]
    else:
        test.update(test="Welch, two-sided", margin=None, tost=None, p=test["welch_p"])
    return test


def adjust(tests: list[dict]) -> list[dict]:
    """Holm over the family (in place, and returned): "p_holm" from each test's "p"; "welch_p_holm"
    for a map claim is its p_holm, for a parity claim its Welch p adjusted in the same family in
    place of its TOST p. A test with no p (neither group varies) counts with p = 1; its adjusted p
    is None. Then each test's "outcome"."""
    family = [1.0 if test["p"] is None else test["p"] for test in tests]
    for test, p_holm in zip(tests, holm(family), strict=True):
        test["p_holm"] = None if test["p"] is None else p_holm
    for index, test in enumerate(tests):
        if test["tost"] is None:
            test["welch_p_holm"] = test["p_holm"]
        else:
            swapped = list(family)
            swapped[index] = 1.0 if test["welch_p"] is None else test["welch_p"]
            test["welch_p_holm"] = None if test["welch_p"] is None else holm(swapped)[index]
        test["outcome"] = outcome(test)
    return tests


def outcome(test: dict) -> str:
    """The registered words for an adjusted test."""
    def shown(p):
        return p is not None and p < ALPHA

    difference = shown(test["welch_p_holm"])
    if test["tost"] is None:
        if test["welch_p_holm"] is None:
            return "n/a (neither group varies)"
        return "a difference shown" if difference else "not shown"
    if test["p_holm"] is None and test["welch_p_holm"] is None:
        return "n/a (neither group varies)"
    equivalence = shown(test["p_holm"])
    if equivalence and difference:
        return "equivalence shown; a difference inside the margin shown"
    if equivalence:
        return "equivalence shown"
    return "a difference shown" if difference else "neither shown"


def family(rows: list[dict], setting: str, baseline: str = "none", label: str = "primary") -> dict:
    """The five claims' tests of `setting` against `baseline` over per-run rows (``per_run``), Holm
    over the five: {"label", "setting", "baseline", "n", "tests": [compare + adjust per claim]}."""
    a, b = group_values(rows, setting), group_values(rows, baseline)
    tests = adjust([compare(claim, a[claim], b[claim]) for claim in CLAIMS])
    return {"label": label, "setting": setting, "baseline": baseline,
            "n": {setting: len(a[CLAIMS[0]]), baseline: len(b[CLAIMS[0]])}, "tests": tests}


def primary_family(metrics, tasks=TASKS) -> dict:
    """The registered family: `spatial` against `none`, Holm over the five."""
    return family(per_run(metrics, tasks), *PRIMARY, label="primary")


def exploratory_family(metrics, setting: str = EXPLORATORY[0], tasks=TASKS) -> dict:
    """The same five tests for another setting (default `topoloss`) against `none`: exploratory, Holm
    within these five."""
    return family(per_run(metrics, tasks), setting, PRIMARY[1], label="exploratory")


def _check_sheet(metrics, sheet: str, what: str) -> None:
    wrong = [f"{run_name(run)} ({run.get('sheet')})" for run in runs_of(metrics) if run.get("sheet") != sheet]
    if wrong:
        raise ValueError(f"the {what} file should hold runs measured on {sheet} sheets; these are not: "
                         + ", ".join(wrong))


def study_result(channel_freq, channels, tasks=TASKS) -> dict:
    """Everything a table writer prints: {"tasks", "per_run" (rows of both files), "primary" (spatial
    vs none on channel_freq sheets), "exploratory" (topoloss vs none on channels sheets)}. The two
    files measure the same `none` checkpoints on two sheets, so their accuracies must agree."""
    _check_sheet(channel_freq, "channel_freq", "channel_freq")
    _check_sheet(channels, "channels", "channels")
    freq_rows, channel_rows = per_run(channel_freq, tasks), per_run(channels, tasks)
    accuracy = {row["seed"]: row["accuracy"] for row in freq_rows if row["group"] == PRIMARY[1]}
    for row in channel_rows:
        shared = row["group"] == PRIMARY[1] and row["seed"] in accuracy
        if shared and row["accuracy"] != accuracy[row["seed"]]:
            raise ValueError(f"{row['run']}: its validation accuracy differs between the two files "
                             f"({accuracy[row['seed']]} vs {row['accuracy']}): not the same checkpoints")
    return {"tasks": list(tasks), "per_run": freq_rows + channel_rows,
            "primary": family(freq_rows, *PRIMARY, label="primary"),
            "exploratory": family(channel_rows, *EXPLORATORY, label="exploratory")}
