#!/usr/bin/python3
"""Summary of tests/bench/run_fmnist.sh's JSON lines (one run per line, each
tagged "env": "env" or "native"): per OpenBLAS kernel, medians of trainbus
and PyTorch samples/s, their ratio, trainbus's scaling from 1 thread, and
trainbus as a fraction of the one-core sgemm bound measured in the same run;
then the issue's targets, met or not.

    python3 tests/bench/summarize_fmnist.py RESULTS_FILE
"""
import json
import statistics
import sys

TARGET_SCALING = 1.7  # N threads / 1 thread
TARGET_RATIO = 1.3  # trainbus / PyTorch, 1 thread
TARGET_BOUND = 0.75  # of the one-core sgemm bound, 1 thread
TARGET_ACC = 0.88  # test accuracy after 10 epochs


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
    verdict = []
    for kind in ("env", "native"):
        mine = [r for r in rows if r["env"] == kind]
        if not mine:
            continue
        sg = [r for r in mine if r["impl"] == "sgemm"]
        bound = med([r["bound_samples_per_s"] for r in sg])
        bound_cpu = med([r["bound_samples_per_cpu_s"] for r in sg])
        kernel = ",".join(sorted({r["kernel"] for r in mine}))
        what = ("environment as it is" if kind == "env"
                else "OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE unset")
        print("== %s: OpenBLAS kernel %s" % (what, kernel))
        print("one-core sgemm at the step's shapes: %.1f GFLOP/s (CPU time; %.1f wall), "
              "%.0f FLOP per sample: bound %.0f samples/s (%.0f per CPU second)"
              % (med([r["gflops_cpu"] for r in sg]), med([r["gflops_wall"] for r in sg]),
                 sg[0]["flops_per_sample"] if sg else float("nan"), bound, bound_cpu))
        hdr = ("threads", "trainbus samples/s", "PyTorch samples/s", "ratio",
               "trainbus scaling", "of sgemm bound", "per CPU s (of bound)",
               "acc trainbus / PyTorch", "cpu/wall trainbus / PyTorch")
        print(" | ".join(hdr))
        base = None
        for t in sorted({r["threads_requested"] for r in mine if r["impl"] != "sgemm"}):
            tb = [r for r in mine if r["impl"] == "trainbus" and r["threads_requested"] == t]
            th = [r for r in mine if r["impl"] == "torch" and r["threads_requested"] == t]
            s_tb, s_th = med([r["samples_per_s"] for r in tb]), med([r["samples_per_s"] for r in th])
            per_cpu = med([r["samples_per_s"] / r["cpu_per_wall"] for r in tb])
            if t == 1:
                base = s_tb
            scaling = s_tb / base if base else float("nan")
            a_tb, a_th = med([r["test_acc"] for r in tb]), med([r["test_acc"] for r in th])
            print(" | ".join([
                str(t), "%.0f" % s_tb, "%.0f" % s_th, "%.2fx" % (s_tb / s_th),
                "%.2fx" % scaling, "%.0f %%" % (100 * s_tb / bound),
                "%.0f (%.0f %%)" % (per_cpu, 100 * per_cpu / bound_cpu),
                "%.4f / %.4f" % (a_tb, a_th),
                "%.2f / %.2f" % (med([r["cpu_per_wall"] for r in tb]),
                                 med([r["cpu_per_wall"] for r in th]))]))
            print("   runs: trainbus %s  PyTorch %s" % (
                " ".join("%.0f" % r["samples_per_s"] for r in tb),
                " ".join("%.0f" % r["samples_per_s"] for r in th)))
            if t == 1:
                verdict.append("%s: 1 thread %.2fx PyTorch (target >= %.1fx): %s"
                               % (kernel, s_tb / s_th, TARGET_RATIO,
                                  "met" if s_tb / s_th >= TARGET_RATIO else "NOT met"))
                frac, frac_cpu = s_tb / bound, per_cpu / bound_cpu
                verdict.append("%s: 1 thread at %.0f %% of the sgemm bound in wall time, %.0f %% in "
                               "CPU time (target >= %.0f %%): %s"
                               % (kernel, 100 * frac, 100 * frac_cpu, 100 * TARGET_BOUND,
                                  "met" if frac >= TARGET_BOUND else
                                  "met in CPU time only" if frac_cpu >= TARGET_BOUND else "NOT met"))
            else:
                verdict.append("%s: %d threads %.2fx 1 thread (target >= %.1fx): %s"
                               % (kernel, t, scaling, TARGET_SCALING,
                                  "met" if scaling >= TARGET_SCALING else "NOT met"))
            verdict.append("%s: %d thread(s) test accuracy %.4f (target >= %.2f): %s"
                           % (kernel, t, a_tb, TARGET_ACC, "met" if a_tb >= TARGET_ACC else "NOT met"))
        print()
    print("\n".join(verdict))


if __name__ == "__main__":
    main()
