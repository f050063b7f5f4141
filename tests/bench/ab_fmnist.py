#!/usr/bin/env python3
"""Before/after for the Fashion-MNIST benchmark: two bench_fmnist binaries
(say main's and a branch's) run alternately in one session, the order swapped
every other run so a shared machine's drift hits both alike; prints the
median samples/s of each and their ratio, once with the environment's
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE and once with both unset (the
processor's own kernels), as tests/bench/run_fmnist.sh does. Besides
samples per wall second it gives samples per CPU second of the training
loop, which a machine shared with other jobs disturbs much less.

    python3 tests/bench/ab_fmnist.py BASE_BINARY NEW_BINARY
    RUNS=9 EPOCHS=3 THREADS=1 (defaults)

Build the base with `git archive main | tar -x -C /tmp/base && cmake ...
--target bench_fmnist`; the data set is dataset-fashion-mnist's."""
import json
import os
import statistics
import subprocess
import sys


def env(native):
    e = dict(os.environ)
    if native:
        e.pop("OPENBLAS_CORETYPE", None)
        e.pop("OPENBLAS_L2_SIZE", None)
    return e


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    bins = {"base": sys.argv[1], "new": sys.argv[2]}
    runs, epochs, threads = (int(os.environ.get("RUNS", 9)), os.environ.get("EPOCHS", "3"),
                             os.environ.get("THREADS", "1"))
    for native in (False, True):
        res = {"base": [], "new": []}
        cpu = {"base": [], "new": []}
        for i in range(runs):
            for b in (("base", "new") if i % 2 == 0 else ("new", "base")):
                out = subprocess.run([bins[b], "--epochs", epochs, "--threads", threads, "--json"],
                                     capture_output=True, text=True, env=env(native), check=True)
                r = json.loads(out.stdout)
                res[b].append(r["samples_per_s"])
                cpu[b].append(r["samples_per_s"] / r["cpu_per_wall"])
        mb, mn = statistics.median(res["base"]), statistics.median(res["new"])
        cb, cn = statistics.median(cpu["base"]), statistics.median(cpu["new"])
        what = ("processor's own kernels (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE unset)" if native
                else "OPENBLAS_CORETYPE=%s OPENBLAS_L2_SIZE=%s" %
                (os.environ.get("OPENBLAS_CORETYPE", "-"), os.environ.get("OPENBLAS_L2_SIZE", "-")))
        print("%s: base %.0f, new %.0f samples/s, new/base %.3f (medians of %d runs of %s epochs, "
              "%s thread(s))" % (what, mb, mn, mn / mb, runs, epochs, threads))
        print("  per CPU second: base %.0f, new %.0f, new/base %.3f" % (cb, cn, cn / cb))
        for b in ("base", "new"):
            print("  %-4s %s" % (b, " ".join("%.0f" % x for x in res[b])))


if __name__ == "__main__":
    main()
