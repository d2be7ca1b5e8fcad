"""The paper's Figure 3 on digits: latent-optimisation cost against time, JIIO vs inner Adam,
for generators trained with different JIIO budgets (the paper: T = 40 and T = 100).

Report only: the measurements are ``evaluate.py --task=timing`` runs (compile excluded,
interleaved repeats, cost scored at the DEQ re-solved from 0), one per trained model::

  python experiments/train.py --config=configs/digits_gen.py --workdir=/tmp/fig3_T40 \\
      --config.model.jiio.max_steps=40
  python experiments/evaluate.py --workdir=/tmp/fig3_T40 --task=timing \\
      --steps=10,20,30,40,60,80,100
  (the same with 100)
  python experiments/benchmarks/figure3.py --run=T=40:/tmp/fig3_T40 --run=T=100:/tmp/fig3_T100

writes ``experiments/results/figure3.md`` (table) and ``figure3.png`` (one panel per model:
JIIO's cost at each step budget against its time, and the cold and warm-started Adam-40).
"""

from __future__ import annotations

import argparse
import glob
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(REPO, "experiments", "results")


def load_timing(workdir: str) -> dict:
    """The newest ``eval/timing_step<N>.json`` of a run (``evaluate.py --task=timing``)."""
    paths = glob.glob(os.path.join(workdir, "eval", "timing_step*.json"))
    if not paths:
        raise FileNotFoundError(
            f"no eval/timing_step*.json in {workdir}: run "
            f"`python experiments/evaluate.py --workdir={workdir} --task=timing` first."
        )
    path = max(paths, key=lambda p: int(p.rsplit("step", 1)[1].split(".")[0]))
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def curves(timing: dict) -> dict:
    """``{"jiio": [(steps, seconds, cost)], "adam_cold": (s, c), "adam_warm": (s, c) | None}``."""
    jiio = sorted((int(k), v["seconds_median"], v["quality"]) for k, v in timing["jiio"].items())
    cold = timing["baseline"]
    warm = timing.get("baseline_warm") or {}
    return {
        "jiio": jiio,
        "adam_cold": (cold["seconds_median"], cold["quality"], cold["steps"]),
        "adam_warm": (
            (warm["seconds_median"], warm["quality"], warm["steps"]) if "quality" in warm else None
        ),
    }


def markdown(runs: dict[str, dict]) -> str:
    lines = [
        "# Figure 3 on digits: latent-optimisation cost vs time, by training budget",
        "",
        "Made by `experiments/benchmarks/figure3.py` from `evaluate.py --task=timing` runs "
        "(batch of test images, cost = mean inner cost at the DEQ re-solved from 0 at the "
        "returned latent, wall seconds per batched solve, compile excluded, medians of "
        "interleaved repeats). Paper (CelebA, GPU): models trained with T = 40 and T = 100; "
        "Table 3: Adam-40 7659 ms, JIIO-40 862 ms, JIIO-100 2156 ms.",
        "",
        "| model | method | steps | cost | time (s) |",
        "|---|---|---|---|---|",
    ]
    for name, timing in runs.items():
        c = curves(timing)
        s, q, k = c["adam_cold"]
        lines.append(f"| {name} | Adam (cold, paper) | {k} | {q:.3g} | {s:.3g} |")
        if c["adam_warm"]:
            s, q, k = c["adam_warm"]
            lines.append(f"| {name} | Adam (warm start) | {k} | {q:.3g} | {s:.3g} |")
        for k, s, q in c["jiio"]:
            lines.append(f"| {name} | JIIO | {k} | {q:.3g} | {s:.3g} |")
    lines += ["", "Verdicts (time to reach the baseline's cost):", ""]
    for name, timing in runs.items():
        lines.append(f"- {name}: {timing.get('verdict', 'n/a')}")
        if isinstance(timing.get("vs_warm"), dict):
            lines.append(f"- {name}: {timing['vs_warm'].get('verdict', 'n/a')}")
    lines += ["", "![](figure3.png)", ""]
    return "\n".join(lines)


def plot(runs: dict[str, dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4.2), squeeze=False)
    for ax, (name, timing) in zip(axes[0], runs.items(), strict=True):
        c = curves(timing)
        ax.plot([s for _, s, _ in c["jiio"]], [q for _, _, q in c["jiio"]], "o-", label="JIIO")
        for k, s, q in c["jiio"]:
            ax.annotate(str(k), (s, q), textcoords="offset points", xytext=(4, 4), fontsize=8)
        s, q, k = c["adam_cold"]
        ax.plot([s], [q], "s", ms=9, label=f"Adam-{k} (cold, paper)")
        if c["adam_warm"]:
            s, q, k = c["adam_warm"]
            ax.plot([s], [q], "D", ms=8, label=f"Adam-{k} (warm start)")
        ax.set(xscale="log", yscale="log", xlabel="time per batch (s)", ylabel="inner cost")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
        ax.set_title(f"generator trained with JIIO {name}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--run", action="append", required=True, help="NAME:WORKDIR of a trained generator"
    )
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.run:
        name, sep, workdir = spec.partition(":")
        if not sep or not workdir:
            parser.error(f"--run must be NAME:WORKDIR, got {spec!r}")
        runs[name] = load_timing(workdir)
    os.makedirs(args.out, exist_ok=True)
    text = markdown(runs)
    with open(os.path.join(args.out, "figure3.md"), "w", encoding="utf-8") as f:
        f.write(text)
    plot(runs, os.path.join(args.out, "figure3.png"))
    print(text)
    return text


if __name__ == "__main__":
    main()
