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

Over a network instead of shared memory: two_hosts.sh puts the two ranks in network namespaces
joined by a link shaped to a bandwidth, and --link-gbps adds the cost model's time on that link
(README.md) beside the time measured in collectives:

    bash benches/scaling/two_hosts.sh up 1gbit
    python3 benches/scaling/scaling.py --layouts 2x1 --link-gbps 1 --latency-us 50 \
        --mpirun "$(bash benches/scaling/two_hosts.sh mpirun)"
"""

import argparse
import json
import os
import shlex
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


def link_ms(comm, ranks, gbps, latency_us):
    """The cost model's time per step on a link of `gbps` (each way) for rank 0's collectives:
    per call the latency, and the bytes that cross the link. An all-reduce of B sends 2B(N-1)/N
    (a ring); an all-gather of a rank's piece B brings it the others', (N-1)B; an all-to-all
    sends the (N-1)/N of its B bound elsewhere; the broadcasts (the ranks' K-FAC inverses, one
    after another) move the root's B and, with the inverses shared out evenly, as much from
    each other rank, NB."""
    share = {"all-reduce": 2 * (ranks - 1) / ranks, "all-gather": ranks - 1,
             "all-to-all": (ranks - 1) / ranks, "broadcast": ranks}
    beta = gbps * 1e9 / 8
    return sum(1e3 * (f["calls"] * latency_us * 1e-6 + share[f["collective"]] * f["bytes"] / beta)
               for f in comm.values())


def run(name, flags, steps, ranks, threads, out_root, repeats, mpirun):
    """The best of `repeats` runs (by wall time per step): its summary.json."""
    best = None
    for k in range(repeats):
        out = os.path.join(out_root, f"{name}-r{ranks}-t{threads}-{k}")
        cmd = [BIN, "train", *flags, "--device", "cpu", "--steps", str(steps), "--profile",
               "--out", out, "--overwrite"]
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        if ranks > 1:
            cmd = [*mpirun, "--allow-run-as-root", "--oversubscribe", "-np", str(ranks),
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
    ap.add_argument("--layouts", help="ranks x threads to run, e.g. 1x1,2x1 (default: 1 x 1, "
                    "1 x the cores, --ranks x the cores shared out)")
    ap.add_argument("--mpirun", default="mpirun", help="the launcher and its options (two_hosts.sh's)")
    ap.add_argument("--link-gbps", type=float, help="add the cost model's time on a link this fast")
    ap.add_argument("--latency-us", type=float, default=0.0, help="the link's latency per call")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    if args.layouts:
        layouts = [tuple(int(x) for x in l.split("x")) for l in args.layouts.split(",")]
    else:
        layouts = [(1, 1), (1, cores), (args.ranks, max(1, cores // args.ranks))]
    model = f" | cost model's link time ({args.link_gbps:g} Gb/s)" if args.link_gbps else ""
    print("| workload | ranks × threads | ms/step | " + " | ".join(PHASES) +
          " | in collectives" + model + " | bytes/step a rank hands in | final loss |")
    print("|---|---|---|" + "---|" * len(PHASES) + "---|" * (3 + bool(model)))
    for name, flags, steps in WORKLOADS:
        if args.only and name not in args.only:
            continue
        base = None
        for ranks, threads in layouts:
            s = run(name, flags, steps, ranks, threads, args.out, args.repeats, shlex.split(args.mpirun))
            ms = 1e3 * s["wall_s"] / s["steps"]
            base = base or ms
            prof = s.get("profile_ms_per_step", {})
            comm = s.get("communication_per_step") or {}
            coll = sum(v["ms"] for v in comm.values())
            moved = sum(v["bytes"] for v in comm.values())
            by = ", ".join(f"{k} {v['bytes'] / 1e3:.1f} kB" for k, v in sorted(comm.items(), key=lambda kv: -kv[1]["bytes"]))
            cells = [f"{prof.get(p, 0):.2f}" for p in PHASES]
            predicted = ""
            if args.link_gbps:
                predicted = f" | {link_ms(comm, ranks, args.link_gbps, args.latency_us):.2f}" if comm else " | "
            print(f"| {name} | {ranks} × {threads} | {ms:.2f} ({base / ms:.2f}×) | " + " | ".join(cells) +
                  f" | {coll:.2f}{predicted} | {moved / 1e3:.1f} kB" + (f" ({by})" if by else "") +
                  f" | {s['train_loss']:.6f} |")


if __name__ == "__main__":
    main()
