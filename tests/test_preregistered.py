"""The issue-21 summariser (topoaudio.analysis.preregistered, docs/results/issue21/tables.py) on
synthetic metrics in the format `python -m topoaudio.evaluate` writes (runs copied from the issue-12
metrics.json and their numbers replaced), and on the issue-12 files themselves."""
import copy
import importlib.util
import json
import math
import pathlib

import pytest

from topoaudio.analysis import preregistered as prereg

REPO = pathlib.Path(__file__).resolve().parents[1]
ISSUE12 = REPO / "docs" / "results" / "issue12"
CHANNEL_FREQ = json.loads((ISSUE12 / "metrics_channel_freq.json").read_text())
CHANNELS = json.loads((ISSUE12 / "metrics_channels.json").read_text())
ISSUE12_TASKS = ("word", "instrument", "category")  # the issue-12 runs had no speaker validation
# layer offsets with mean 0: a run's number is the mean over the layers, not one layer's value
OFFSETS = (-0.01, 0.0, 0.01)


def synthetic_run(group, seed, maps=None, accuracy=0.5, r2=0.4, sheet="channel_freq"):
    """A run of the issue-12 format: trained numbers set, the controls' left as they were."""
    maps = maps or {}
    run = copy.deepcopy(CHANNEL_FREQ["runs"][0])
    run.update(topo=group, seed=seed, sheet=sheet, checkpoint=f"/runs/{group}-seed{seed}/checkpoint.pt",
               val_accuracy={task: accuracy + 0.01 * i for i, task in enumerate(prereg.TASKS)})
    for layer, offset in zip(prereg.LAYERS, OFFSETS, strict=True):
        for name in prereg.MAP_CLAIMS:
            run["layers"][layer][name]["morans_i"] = maps.get(name, 0.0) + offset
        run["layers"][layer]["component_r2"] = {c: r2 + offset for c in prereg.COMPONENTS}
    return run


def study(spatial=None, none=None, noise=(0.0, 0.0, 0.0, 0.0, 0.0), spatial_noise=None):
    """{"runs": five none and five spatial runs}: each claim's value plus the seed's noise
    (spatial_noise: its own noise, else the same as none's, so a claim without an effect has
    difference 0 exactly)."""
    spatial_noise = noise if spatial_noise is None else spatial_noise
    runs = []
    for group, base, deviations in (("none", none or {}, noise), ("spatial", spatial or {}, spatial_noise)):
        for seed, d in enumerate(deviations):
            maps = {name: base.get(name, 0.0) + d for name in prereg.MAP_CLAIMS}
            runs.append(synthetic_run(group, seed, maps, base.get("accuracy", 0.5) + d,
                                      base.get("component_r2", 0.4) + d))
    return {"runs": runs}


def outcomes(family):
    return {test["claim"]: test["outcome"] for test in family["tests"]}


def test_claim_numbers_are_the_means_of_the_trained_condition():
    run = synthetic_run("none", 0, {"am_rate": 0.3}, accuracy=0.5, r2=0.4)
    for layer in prereg.LAYERS:  # controls that differ wildly must not enter
        run["controls"]["untrained"]["layers"][layer]["am_rate"]["morans_i"] = 9.0
        run["controls"]["untrained"]["layers"][layer]["component_r2"]["speech"] = 9.0
    numbers = prereg.claim_numbers(run)
    assert numbers["am_rate"] == pytest.approx(0.3)
    assert numbers["tonotopy_within_band"] == pytest.approx(0.0)
    assert numbers["accuracy"] == pytest.approx(0.5 + 0.01 * 1.5)  # mean of 0.50, 0.51, 0.52, 0.53
    assert numbers["component_r2"] == pytest.approx(0.4)


def test_holm_over_the_five_on_known_p_values():
    maps = [{"p": p, "welch_p": p, "tost": None} for p in (0.01, 0.04, 0.03)]
    parity = [{"p": 0.005, "welch_p": 0.9, "tost": {}}, {"p": 0.5, "welch_p": 0.002, "tost": {}}]
    tests = prereg.adjust(maps + parity)
    assert [t["p_holm"] for t in tests] == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.5])
    # each parity claim's Welch p is adjusted in the family in place of its own TOST p
    assert tests[3]["welch_p_holm"] == pytest.approx(1.0)
    assert tests[4]["welch_p_holm"] == pytest.approx(0.01)
    assert [t["outcome"] for t in tests] == ["a difference shown", "not shown", "not shown",
                                            "equivalence shown", "a difference shown"]


def test_a_claim_without_a_test_still_counts_in_the_family_of_five():
    tests = [{"p": p, "welch_p": p, "tost": None} for p in (0.01, None, 0.02, 0.03, 0.04)]
    adjusted = [t["p_holm"] for t in prereg.adjust(tests)]
    assert adjusted[1] is None and tests[1]["outcome"] == "n/a (neither group varies)"
    assert [adjusted[i] for i in (0, 2, 3, 4)] == pytest.approx([0.05, 0.08, 0.09, 0.09])  # m = 5, not 4


def test_a_clear_difference_is_shown_and_no_difference_is_not():
    noise = (-0.02, -0.01, 0.0, 0.01, 0.02)
    family = prereg.primary_family(study(spatial={"am_rate": 0.3, "music_vs_speech": 0.4}, noise=noise))
    found = outcomes(family)
    assert found["am_rate"] == found["music_vs_speech"] == "a difference shown"
    assert found["tonotopy_within_band"] == "not shown"
    am = next(t for t in family["tests"] if t["claim"] == "am_rate")
    assert am["difference"] == pytest.approx(0.3) and am["welch_t"] > 0 and am["p_holm"] < 0.001
    assert family["n"] == {"spatial": 5, "none": 5} and family["label"] == "primary"


def test_equivalence_is_shown_for_near_identical_groups_with_small_variance():
    noise = (-0.002, -0.001, 0.0, 0.001, 0.002)
    family = prereg.primary_family(study(spatial={"accuracy": 0.501, "component_r2": 0.4005},
                                         none={"accuracy": 0.5, "component_r2": 0.4}, noise=noise))
    found = outcomes(family)
    assert found["accuracy"] == found["component_r2"] == "equivalence shown"
    for test in family["tests"][3:]:
        assert test["p"] == max(test["tost"]["p_lower"], test["tost"]["p_upper"]) < 0.01


def test_large_variance_shows_neither_and_a_large_parity_gap_is_a_difference():
    noisy = (-0.2, 0.1, 0.0, -0.1, 0.2)
    family = prereg.primary_family(study(spatial={"am_rate": 0.05, "accuracy": 0.51}, noise=noisy,
                                         spatial_noise=(0.1, -0.2, 0.2, 0.0, -0.1)))
    found = outcomes(family)
    assert found["am_rate"] == "not shown"
    assert found["accuracy"] == found["component_r2"] == "neither shown"
    small = (-0.003, 0.0, 0.003, 0.001, -0.001)
    gap = prereg.primary_family(study(spatial={"component_r2": 0.35}, noise=small))
    assert outcomes(gap)["component_r2"] == "a difference shown"


def test_the_exploratory_family_is_labelled_and_compares_its_own_group():
    metrics = study(spatial={"am_rate": 0.3}, noise=(-0.02, -0.01, 0.0, 0.01, 0.02))
    for run in metrics["runs"]:
        if run["topo"] == "spatial":
            run["topo"] = "topoloss"
    family = prereg.exploratory_family(metrics)
    assert family["label"] == "exploratory" and family["setting"] == "topoloss"
    assert outcomes(family)["am_rate"] == "a difference shown"
    with pytest.raises(ValueError, match=r"no runs of group 'spatial' \(groups present: none, topoloss\)"):
        prereg.primary_family(metrics)


def test_bad_input_is_one_clear_error():
    metrics = study(noise=(0.0, 0.1, 0.2, 0.3, 0.4))
    one = {"runs": [run for run in metrics["runs"] if run["topo"] == "none" or run["seed"] == 0]}
    with pytest.raises(ValueError, match="group 'spatial' has 1 run; a Welch test needs at least 2"):
        prereg.primary_family(one)
    broken = copy.deepcopy(metrics)
    del broken["runs"][6]["layers"]["block3"]["am_rate"]
    with pytest.raises(ValueError, match="run spatial-seed1 layer block3 has no map 'am_rate'"):
        prereg.primary_family(broken)
    broken = copy.deepcopy(metrics)
    del broken["runs"][2]["layers"]["block4"]
    with pytest.raises(ValueError, match=r"run none-seed2 has no layer 'block4' \(its layers: block2, "):
        prereg.primary_family(broken)
    broken = copy.deepcopy(metrics)
    del broken["runs"][0]["val_accuracy"]["speaker"]
    with pytest.raises(ValueError, match=r"none-seed0 has no validation accuracy of task\(s\) \['speaker'\]"):
        prereg.primary_family(broken)
    broken = copy.deepcopy(metrics)
    del broken["runs"][0]["layers"]["block2"]["component_r2"]["pitch"]
    with pytest.raises(ValueError, match=r"layer block2 has no component R² of \['pitch'\]"):
        prereg.primary_family(broken)
    broken = copy.deepcopy(metrics)
    broken["runs"][0]["layers"]["block2"]["music_vs_speech"]["morans_i"] = math.nan
    with pytest.raises(ValueError, match="music_vs_speech morans_i is nan, not a finite number"):
        prereg.primary_family(broken)
    broken = copy.deepcopy(metrics)
    broken["runs"][1]["seed"] = 0
    with pytest.raises(ValueError, match="group 'none' seed 0 appears twice"):
        prereg.primary_family(broken)
    with pytest.raises(ValueError, match="expected a metrics dict with a list of runs"):
        prereg.primary_family({"summary": {}})


def test_issue12_per_run_numbers_equal_the_json():
    rows = prereg.per_run(CHANNEL_FREQ, tasks=ISSUE12_TASKS) + prereg.per_run(CHANNELS, tasks=ISSUE12_TASKS)
    runs = CHANNEL_FREQ["runs"] + CHANNELS["runs"]
    assert len(rows) == len(runs) == 12
    for row, run in zip(rows, runs, strict=True):
        layers = [run["layers"][layer] for layer in ("block2", "block3", "block4")]
        assert (row["group"], row["seed"], row["sheet"]) == (run["topo"], run["seed"], run["sheet"])
        assert row["run"] == f"{run['topo']}-seed{run['seed']}"
        for name in ("tonotopy_within_band", "am_rate", "music_vs_speech"):
            assert row[name] == pytest.approx(sum(m[name]["morans_i"] for m in layers) / 3, abs=1e-12)
        assert row["accuracy"] == pytest.approx(sum(run["val_accuracy"].values()) / 3, abs=1e-12)
        r2 = [value for m in layers for value in m["component_r2"].values()]
        assert len(r2) == 18 and row["component_r2"] == pytest.approx(sum(r2) / 18, abs=1e-12)
    # the registered four tasks are asked for by default, and the issue-12 runs lack speaker
    with pytest.raises(ValueError, match=r"has no validation accuracy of task\(s\) \['speaker'\]"):
        prereg.per_run(CHANNEL_FREQ)


def test_study_result_checks_the_sheets_and_the_shared_none_runs():
    with pytest.raises(ValueError, match="should hold runs measured on channel_freq sheets"):
        prereg.study_result(CHANNELS, CHANNELS, tasks=ISSUE12_TASKS)
    channels = copy.deepcopy(CHANNELS)
    channels["runs"][1]["val_accuracy"]["word"] += 0.1
    with pytest.raises(ValueError, match="none-seed1: its validation accuracy differs between the two files"):
        prereg.study_result(CHANNEL_FREQ, channels, tasks=ISSUE12_TASKS)


def _tables_script():
    spec = importlib.util.spec_from_file_location("issue21_tables", REPO / "docs/results/issue21/tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tables_script_on_the_issue12_files(capsys, tmp_path):
    tables = _tables_script()
    tables.main([str(ISSUE12 / "metrics_channel_freq.json"), str(ISSUE12 / "metrics_channels.json")])
    out = capsys.readouterr().out
    assert "**Stand-in, not the registered claim:**" in out and "of speaker" in out
    assert out.count("| none-seed0 |") == 2  # on both sheets
    primary = out.split("## Primary family")[1].split("## Exploratory")[0]
    assert "| music vs speech (Moran's I, mean block2-4) | 0.0199 | 0.4559 | +0.4360 |" in primary
    assert primary.count("neither shown") == 2
    # a registered task that some runs have and others lack is not stood in for: an error
    channel_freq = copy.deepcopy(CHANNEL_FREQ)
    channel_freq["runs"][0]["val_accuracy"]["speaker"] = 0.5
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(channel_freq))
    with pytest.raises(SystemExit, match=r"spatial-seed0|none-seed1"):
        tables.main([str(path), str(ISSUE12 / "metrics_channels.json")])
