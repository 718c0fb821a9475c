"""Two runs alike but for one setting, evaluated the same way (`topoaudio evaluate --checkpoint ...
--natsound165 ...`), side by side and against the spread of three exact-front-end float32 seeds of
the issue-12 study (docs/results/issue12, spatial group, 800 steps): z = (run - study mean) / sd.

Run: python docs/run_logs/compare_pair.py DIR LABEL_A LABEL_B
     (reads DIR/evaluation/{A,B}-metrics.json, writes DIR/compare.md)
"""
import argparse
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
STUDY = ROOT / "docs/results/issue12/metrics_channel_freq.json"


def means(path: pathlib.Path) -> dict:
    return {k: v["spatial"]["mean"] for k, v in json.loads(path.read_text())["summary"].items()
            if "spatial" in v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dir", type=pathlib.Path)
    parser.add_argument("a")
    parser.add_argument("b")
    args = parser.parse_args()
    a = means(args.dir / f"evaluation/{args.a}-metrics.json")
    b = means(args.dir / f"evaluation/{args.b}-metrics.json")
    study = {k: v["spatial"] for k, v in json.loads(STUDY.read_text())["summary"].items()
             if "spatial" in v}
    keys = [k for k in a if k in b and k in study and study[k]["sd"] > 0
            and (k.startswith("val_accuracy") or k.endswith("morans_i") or "/r2_" in k)]
    lines = [f"| measure | study: 3 exact seeds, mean ± sd | {args.a} | {args.b} | "
             f"{args.b} - {args.a} | z {args.a} | z {args.b} |", "|---|---:|---:|---:|---:|---:|---:|"]
    outside = {args.a: 0, args.b: 0}
    for k in keys:
        mean, sd = study[k]["mean"], study[k]["sd"]
        z_a, z_b = (a[k] - mean) / sd, (b[k] - mean) / sd
        outside[args.a] += abs(z_a) > 2
        outside[args.b] += abs(z_b) > 2
        lines.append(f"| {k} | {mean:.3f} ± {sd:.3f} | {a[k]:.3f} | {b[k]:.3f} | {b[k] - a[k]:+.3f} | "
                     f"{z_a:+.1f} | {z_b:+.1f} |")
    lines += ["", f"{len(keys)} measures; beyond 2 study sd: {args.a} {outside[args.a]}, "
              f"{args.b} {outside[args.b]}. Made by docs/run_logs/compare_pair.py."]
    (args.dir / "compare.md").write_text("\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main()
