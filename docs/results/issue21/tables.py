"""The tables of the issue-21 study (docs/SCIENCE.md section 8, the registered family) from the two
metrics.json files that `python -m topoaudio.evaluate` writes:

    python docs/results/issue21/tables.py CHANNEL_FREQ_METRICS CHANNELS_METRICS > tables.md

CHANNEL_FREQ_METRICS: the `none` and `spatial` runs measured on channel_freq sheets (the primary
family, spatial vs none); CHANNELS_METRICS: the `none` and `topoloss` runs on channels sheets (the
same five tests, exploratory). Prints markdown: one row per run, the primary family, the exploratory
family. Every number comes from topoaudio.analysis.preregistered.

A stand-in: files written before a registered task existed (the issue-12 study had no speaker
validation) are read with the tasks every run has, and the output says so at the top; a task that
some runs have and others lack is an error.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

try:
    from topoaudio.analysis import preregistered as prereg
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))
    from topoaudio.analysis import preregistered as prereg


def fmt(x, spec: str = ".4f") -> str:
    return "n/a" if x is None or x != x else format(x, spec)


def tasks_to_read(files: list[dict]) -> tuple[tuple, str | None]:
    """(the tasks the accuracy claim averages, a note when that is not the registered four)."""
    accuracies = [run.get("val_accuracy") if isinstance(run.get("val_accuracy"), dict) else {}
                  for metrics in files for run in prereg.runs_of(metrics)]
    absent = [task for task in prereg.TASKS if not any(task in accuracy for accuracy in accuracies)]
    if not absent or len(absent) == len(prereg.TASKS):
        return prereg.TASKS, None  # the registered tasks (or nothing to stand in with: the module says why)
    tasks = tuple(task for task in prereg.TASKS if task not in absent)
    return tasks, (f"**Stand-in, not the registered claim:** no run in these files has a validation "
                   f"accuracy of {', '.join(absent)}; the accuracy claim here is the mean of "
                   f"{', '.join(tasks)} only.")


def per_run_table(rows: list[dict]) -> list[str]:
    lines = ["| run | group | sheet | seed | " + " | ".join(prereg.CLAIMS) + " |",
             "|---|---|---|---:|" + "---:|" * len(prereg.CLAIMS)]
    for row in rows:
        lines.append(f"| {row['run']} | {row['group']} | {row['sheet']} | {row['seed']} | "
                     + " | ".join(fmt(row[claim]) for claim in prereg.CLAIMS) + " |")
    return lines


def family_table(family: dict) -> list[str]:
    setting, baseline = family["setting"], family["baseline"]
    lines = [f"| claim | mean {baseline} (n={family['n'][baseline]}) | mean {setting} "
             f"(n={family['n'][setting]}) | difference | test | p | Holm p | outcome |",
             "|---|---:|---:|---:|---|---:|---:|---|"]
    for test in family["tests"]:
        kind = test["test"] + (f", margin {test['margin']:g}" if test["margin"] is not None else "")
        p, p_holm = fmt(test["p"], ".3g"), fmt(test["p_holm"], ".3g")
        if test["tost"] is not None:  # the Welch test behind "a difference shown" beside the TOST
            p += f" (Welch {fmt(test['welch_p'], '.3g')})"
            p_holm += f" (Welch {fmt(test['welch_p_holm'], '.3g')})"
        lines.append(f"| {prereg.TITLES[test['claim']]} | {fmt(test['mean_baseline'])} | "
                     f"{fmt(test['mean_setting'])} | {fmt(test['difference'], '+.4f')} | {kind} | {p} | "
                     f"{p_holm} | {test['outcome']} |")
    return lines


def report(result: dict, note: str | None) -> str:
    primary, exploratory = result["primary"], result["exploratory"]
    lines = ["# Issue 21: the registered study (docs/SCIENCE.md section 8)", ""]
    if note:
        lines += [note, ""]
    lines += ["## Per run (trained condition)", "",
              "Moran's I of each map, mean over block2-4; accuracy: mean of the final validation "
              f"accuracies of {', '.join(result['tasks'])}; component_r2: mean over block2-4 and the six "
              "NH2015 components of each component's median R² over the cross-validation splits.", ""]
    lines += per_run_table(result["per_run"])
    lines += ["", f"## Primary family: `{primary['setting']}` against `{primary['baseline']}` "
              "(channel_freq sheets; Holm over the five)", "",
              "p is the registered test's: Welch two-sided for the maps; for parity the TOST p (the "
              "larger of its two one-sided Welch p), with the two-sided Welch p in brackets, "
              "Holm-adjusted in the same family in place of the TOST p. Difference: "
              f"{primary['setting']} - {primary['baseline']}.", ""]
    lines += family_table(primary)
    lines += ["", f"## Exploratory: `{exploratory['setting']}` against `{exploratory['baseline']}` "
              "(channels sheets; Holm within these five; no claim rests on it). A channels sheet has "
              "no frequency rows, so its tonotopy_within_band is the plain tonotopy map.", ""]
    lines += family_table(exploratory)
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("channel_freq", help="metrics.json of none + spatial on channel_freq sheets")
    parser.add_argument("channels", help="metrics.json of none + topoloss on channels sheets")
    args = parser.parse_args(argv)
    files = [json.loads(pathlib.Path(path).read_text()) for path in (args.channel_freq, args.channels)]
    tasks, note = tasks_to_read(files)
    try:
        result = prereg.study_result(*files, tasks=tasks)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    sys.stdout.write(report(result, note))


if __name__ == "__main__":
    main()
