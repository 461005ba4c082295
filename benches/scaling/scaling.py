#!/usr/bin/env python3
"""Strong scaling of data-parallel natgrad: the same run (same global batch, seed and steps) as one
process and as N ranks under mpirun, each with --profile, and per step: the wall time, the time by
phase, the time in collectives, and the bytes each rank handed to them, by what was summed.

The rows on this machine's cores: one process on one thread, one process on all the cores, and N
ranks of one thread each (the last against the first is the speed-up ranks on machines of their
own would see, less the network; against the second, what splitting one machine's cores among
ranks costs).

    cargo build --release --features mpi
    python3 benches/scaling/scaling.py                   # the tables (markdown), runs/scaling/*
    python3 benches/scaling/scaling.py --ranks 2 --repeats 3 --only kfac-1.1M
"""

import argparse
import json
import os
import subprocess
import sys

BIN = os.path.join(os.path.dirname(__file__), "..", "..", "target", "release", "natgrad")

# name, flags (each run is `natgrad train` with these), steps
WORKLOADS = [
    ("kfac-digits", ["--dataset", "digits", "--hidden", "32", "--batch", "200"], 90),
    ("dense-digits", ["--dataset", "digits", "--hidden", "32", "--batch", "200", "--curvature", "dense"], 18),
    ("implicit-digits", ["--dataset", "digits", "--hidden", "32", "--batch", "200", "--curvature", "implicit"], 45),
    ("woodbury-digits", ["--dataset", "digits", "--hidden", "32", "--batch", "100", "--curvature", "woodbury",
                         "--fisher", "empirical", "--damping", "0.1"], 18),
    ("adam-1.1M", ["--dataset", "digits", "--hidden", "1024,1024", "--batch", "256", "--optimizer", "adam"], 14),
    ("kfac-1.1M", ["--dataset", "digits", "--hidden", "1024,1024", "--batch", "256"], 14),
    ("implicit-1.1M", ["--dataset", "digits", "--hidden", "1024,1024", "--batch", "256",
                       "--curvature", "implicit", "--cg-iters", "10"], 7),
]
PHASES = ["forward", "gradient", "scores", "fisher", "solve", "update"]


def run(name, flags, steps, ranks, threads, out_root, repeats):
    """The best of `repeats` runs (by wall time per step): its summary.json."""
    best = None
    for k in range(repeats):
        out = os.path.join(out_root, f"{name}-r{ranks}-t{threads}-{k}")
        cmd = [BIN, "train", *flags, "--device", "cpu", "--steps", str(steps), "--profile",
               "--out", out, "--overwrite"]
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        if ranks > 1:
            cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(ranks),
                   "-x", "RAYON_NUM_THREADS", *cmd]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
        with open(os.path.join(out, "summary.json")) as f:
            s = json.load(f)
        if best is None or s["wall_s"] < best["wall_s"]:
            best = s
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="workload names")
    ap.add_argument("--out", default="runs/scaling")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    layouts = [(1, 1), (1, cores), (args.ranks, max(1, cores // args.ranks))]
    print("| workload | ranks × threads | ms/step | " + " | ".join(PHASES) +
          " | in collectives | bytes/step a rank hands in | final loss |")
    print("|---|---|---|" + "---|" * len(PHASES) + "---|---|---|")
    for name, flags, steps in WORKLOADS:
        if args.only and name not in args.only:
            continue
        base = None
        for ranks, threads in layouts:
            s = run(name, flags, steps, ranks, threads, args.out, args.repeats)
            ms = 1e3 * s["wall_s"] / s["steps"]
            base = base or ms
            prof = s.get("profile_ms_per_step", {})
            comm = s.get("communication_per_step") or {}
            coll = sum(v["ms"] for v in comm.values())
            moved = sum(v["bytes"] for v in comm.values())
            by = ", ".join(f"{k} {v['bytes'] / 1e3:.1f} kB" for k, v in sorted(comm.items(), key=lambda kv: -kv[1]["bytes"]))
            cells = [f"{prof.get(p, 0):.2f}" for p in PHASES]
            print(f"| {name} | {ranks} × {threads} | {ms:.2f} ({base / ms:.2f}×) | " + " | ".join(cells) +
                  f" | {coll:.2f} | {moved / 1e3:.1f} kB" + (f" ({by})" if by else "") +
                  f" | {s['train_loss']:.6f} |")


if __name__ == "__main__":
    main()
