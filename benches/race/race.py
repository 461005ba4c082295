#!/usr/bin/env python3
"""The race: natgrad's natural gradient (each curvature representation) against Adam and SGD at
their best learning rates, on one workload, timed to a full-training-set loss.

Workload (issue 10): digits scaled to [0, 1], MLP 64-100-10 relu, batch 200, seed 0, CPU. Each
run is `natgrad train`; its epochs.csv gives the full training loss after every epoch and the
training time up to it (start-up and the per-epoch evaluations excluded). For each run the table
has the first epoch whose loss is at or below each target, the seconds to it, the ms per step and
the final loss. With --jax, the JAX peer (benches/race/jax_peer.py: optax Adam, kfac-jax) runs in
the same sitting.

    python3 benches/race/race.py                        # the table (markdown) and runs/race/*
    python3 benches/race/race.py --runs 3               # best of 3 per configuration
    python3 benches/race/race.py --jax .venv-race/bin/python
    natgrad plot runs/race/* --out docs/race.svg        # loss against step and wall time
"""

import argparse
import csv
import json
import os
import subprocess
import sys

TARGETS = [0.05, 0.01, 0.002]
WORKLOAD = ["--dataset", "digits", "--hidden", "100", "--batch", "200", "--seed", "0", "--device", "cpu"]

# name, extra flags, epochs, slow (run once whatever --runs says)
RUNS = [
    ("ngd, defaults (auto: kfac)", [], 30, False),
    ("ngd implicit (matrix-free exact F, K-FAC-preconditioned CG)", ["--curvature", "implicit"], 30, False),
    ("ngd implicit, no preconditioner", ["--curvature", "implicit", "--preconditioner", "none"], 30, False),
    ("ngd dense (exact F)", ["--curvature", "dense"], 10, True),
    ("ngd woodbury (exact F)", ["--curvature", "woodbury"], 10, True),
    ("adam lr 0.03 (best)", ["--optimizer", "adam", "--lr", "0.03"], 60, False),
    ("adam lr 0.01 (default)", ["--optimizer", "adam"], 60, False),
    ("sgd lr 0.3 (best)", ["--optimizer", "sgd", "--lr", "0.3"], 60, False),
]


def run(natgrad, name, flags, epochs, out):
    cmd = [natgrad, "train", *WORKLOAD, *flags, "--epochs", str(epochs), "--out", out, "--overwrite"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{name}: {' '.join(cmd)} failed: {done.stderr.strip()}")
    with open(os.path.join(out, "epochs.csv")) as f:
        rows = [(int(r["epoch"]), float(r["train_loss"]), float(r["wall_s"])) for r in csv.DictReader(f)]
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    reached = {}
    for target in TARGETS:
        hit = next((r for r in rows if r[1] <= target), None)
        reached[target] = (hit[0], hit[2]) if hit else None
    return {
        "name": name,
        "reached": reached,
        "ms_per_step": 1e3 * summary["wall_s"] / max(summary["steps"], 1),
        "final": rows[-1][1],
        "epochs": rows[-1][0],
    }


def best(results):
    """The fastest of repeated runs: per target the least seconds, per step the least ms."""
    out = dict(results[0])
    out["ms_per_step"] = min(r["ms_per_step"] for r in results)
    out["reached"] = {}
    for t in TARGETS:
        hits = [r["reached"][t] for r in results if r["reached"][t]]
        out["reached"][t] = min(hits, key=lambda h: h[1]) if hits else None
    return out


def cell(hit):
    return f"{hit[0]} / {hit[1]:.3f} s" if hit else "—"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--natgrad", default="target/release/natgrad")
    ap.add_argument("--out", default="runs/race")
    ap.add_argument("--runs", type=int, default=1, help="repeats per configuration; the best is shown")
    ap.add_argument("--only", help="run only configurations whose name contains this")
    ap.add_argument("--jax", help="a Python with jax, optax and kfac-jax: run the JAX peer too")
    a = ap.parse_args()
    rows = []
    for name, flags, epochs, slow in RUNS:
        if a.only and a.only not in name:
            continue
        slug = name.split(" (")[0].replace(" ", "-").replace(",", "")
        repeats = 1 if slow else a.runs
        results = [run(a.natgrad, name, flags, epochs, os.path.join(a.out, slug)) for _ in range(repeats)]
        rows.append(best(results))
        print(f"{name}: done", file=sys.stderr)
    if a.jax:
        peer = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jax_peer.py")
        for opt in ["adam", "kfac"]:
            done = subprocess.run(
                [a.jax, peer, "--optimizer", opt, "--runs", str(a.runs)],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                print(f"jax {opt}: failed: {done.stderr.strip()[-400:]}", file=sys.stderr)
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(
                {
                    "name": f"JAX optax adam lr {r.get('lr')}" if opt == "adam" else "JAX kfac-jax (adaptive)",
                    "reached": {
                        t: (r["targets"][str(t)]["epoch"], r["targets"][str(t)]["wall_s"])
                        if r["targets"].get(str(t))
                        else None
                        for t in TARGETS
                    },
                    "ms_per_step": r["ms_per_step"],
                    "final": r["final_loss"],
                    "epochs": None,
                }
            )
    print("| run | " + " | ".join(f"to {t} (epoch / s)" for t in TARGETS) + " | ms per step | final loss |")
    print("|---|" + "---|" * (len(TARGETS) + 2))
    for r in rows:
        cells = " | ".join(cell(r["reached"][t]) for t in TARGETS)
        print(f"| {r['name']} | {cells} | {r['ms_per_step']:.2f} | {r['final']:.4g} |")


if __name__ == "__main__":
    main()
