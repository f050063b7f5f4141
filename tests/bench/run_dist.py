"""Driver of run_dist.sh (see there): runs the configurations, parses
trainbus train --json events and --rank-stats lines, prints the table."""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

CLI = sys.argv[1]
RUNS = int(os.environ.get("RUNS", "3"))
EPOCHS = int(os.environ.get("EPOCHS", "2"))
KERNELS = os.environ.get("KERNELS", "env native").split()
MPIRUN = shutil.which("mpirun")
MPI = ["--oversubscribe", "--mca", "btl", "self,vader",
       "--mca", "btl_vader_single_copy_mechanism", "none", "--mca", "mpi_yield_when_idle", "1"]


def env_for(kernels):
    e = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
             OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if kernels == "native":
        e.pop("OPENBLAS_CORETYPE", None)
        e.pop("OPENBLAS_L2_SIZE", None)
    return e


def run(config, job, kernels):
    argv = [CLI, "train", job, "--json"]
    if config == "2 ranks":
        argv = [MPIRUN, "-n", "2"] + MPI + argv + ["--rank-stats"]
    elif config == "2 threads":
        argv += ["--threads", "2"]
    p = subprocess.run(argv, capture_output=True, text=True, env=env_for(kernels), timeout=1800)
    if p.returncode != 0:
        sys.exit("%s failed: %s" % (config, p.stderr[-2000:]))
    ev = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    train_s, first, last, rows = 0.0, None, None, 0
    for e in ev:
        if e["event"] == "train_batch_begin" and first is None:
            first = e["time"]
        elif e["event"] == "train_batch_end":
            last = e["time"]
        elif e["event"] == "epoch_end":
            train_s += last - first
            first = None
    steps = sum(e["event"] == "train_batch_end" for e in ev)
    rows = 54000 * EPOCHS
    out = {"sps": rows / train_s, "steps": steps}
    tests = [e for e in ev if e["event"] == "test_end"]
    out["acc"] = tests[-1]["logs"]["accuracy"] if tests else float("nan")
    st = [l for l in p.stderr.splitlines() if "bytes sent per step" in l]
    if st:
        m = [re.search(r"(\d+) steps, (\d+) bytes sent per step.*?([\d.]+) s in them, ([\d.]+) s "
                       r"waiting", l) for l in st]
        out["bytes"] = max(int(x.group(2)) for x in m)
        out["reduce_ms"] = max(float(x.group(3)) for x in m) / int(m[0].group(1)) * 1e3
        out["wait_ms"] = max(float(x.group(4)) for x in m) / int(m[0].group(1)) * 1e3
    return out


def main():
    d = tempfile.mkdtemp(prefix="tb_bench_dist")
    try:
        demo = subprocess.run([CLI, "train", "--print-job"], capture_output=True, text=True,
                              check=True).stdout
        job = json.loads(demo)
        if job["data"]["source"] != "idx":
            sys.exit("Fashion-MNIST not found (dataset-fashion-mnist): the demo is the spirals")
        job["epochs"] = EPOCHS
        job["threads"] = 1
        path = os.path.join(d, "job.json")
        with open(path, "w") as f:
            json.dump(job, f)
        print("load average at start:", open("/proc/loadavg").read().split()[:3])
        configs = ["1 rank", "2 ranks", "2 threads"]
        for kernels in KERNELS:
            e = env_for(kernels)
            print("\nkernels: %s (OPENBLAS_CORETYPE=%s OPENBLAS_L2_SIZE=%s), %d epochs x 54,000 "
                  "rows, %d rounds" % (kernels, e.get("OPENBLAS_CORETYPE", "(unset)"),
                                       e.get("OPENBLAS_L2_SIZE", "(unset)"), EPOCHS, RUNS))
            res = {c: [] for c in configs}
            for r in range(RUNS):
                order = configs[r % 3:] + configs[:r % 3]
                for c in order:
                    res[c].append(run(c, path, kernels))
            med = {c: statistics.median(x["sps"] for x in res[c]) for c in configs}
            print("%-10s %12s %8s %10s" % ("", "samples/s", "ratio", "test acc"))
            for c in configs:
                print("%-10s %12.0f %8.2f %10.4f" % (c, med[c], med[c] / med["1 rank"],
                                                     statistics.median(x["acc"] for x in res[c])))
            two = res["2 ranks"]
            print("2 ranks: scaling efficiency %.0f %% (samples/s / (2 x 1 rank)); %d bytes sent "
                  "per rank per step; per step %.3f ms in the reduction, %.3f ms of it waiting"
                  % (100 * med["2 ranks"] / (2 * med["1 rank"]),
                     two[0]["bytes"], statistics.median(x["reduce_ms"] for x in two),
                     statistics.median(x["wait_ms"] for x in two)))
        print("\nload average at end:", open("/proc/loadavg").read().split()[:3])
    finally:
        shutil.rmtree(d, ignore_errors=True)


main()
