#!/usr/bin/env python3
"""The bridge benchmark (issue 16): observers following a running job's
lifecycle events and sampled batch events (every EVERY-th batch), through

  nats      trainbusd -> trainbus-bridge -> nats-server (JetStream) -> N_NATS observers
  mqtt      trainbusd -> trainbus-bridge -> mosquitto -> N_MQTT observers
  direct    trainbusd -> the same number of observers, subscribed directly
  nats-1    the bridge and nats-server with one observer: what the bridge
            itself costs the trainer, with no crowd loading the machine
  nats-stop nats-1 with nats-server stopped (kill -STOP) for OUTAGE_S
            seconds in the middle of the run, then continued: what a stalled
            broker costs the trainer (the issue asks for within 2 %)

against the same job with no observer at all (baseline), in one run, rounds
interleaved so the machine's noise hits every configuration alike; medians of
RUNS rounds. Per configuration: deliveries per second to the observers (over
the run), latency from the trainer's event (its "time") to the observer,
p50 and p99, the CPU the daemon's loop thread and the bridge used besides the
baseline's, the training slowdown (train_begin to train_end against the
baseline's) and the slowest epoch against the run's median epoch (a trainer
that waited for a stalled broker would have one epoch seconds long). The
observers are tests/bench/bridge/fanout_sub (one epoll process, one TCP
connection each).

Every process of the daemon (its trainer thread, its loop) is pinned to CPU 0,
everything else (the bridge, the broker, the observers) to CPU 1: on this
2-core machine that stands for the daemon's machine and the rest of a
network, so the slowdown measured is what the observers cost the trainer's
machine, not two processes fighting over one core. (PIN=0 turns it off.)

The machine sets OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE; every configuration
runs under that environment ("env") and with both unset ("native"), each
against its own baseline.

  python3 tests/bench/bridge/run_bridge_bench.py            # build/ must be built
  RUNS=3 EPOCHS=10 N_PER_CLASS=25000 N_NATS=1000 N_MQTT=100 EVERY=125 python3 ...

Prints a markdown table per kernel choice and writes them, with the raw
figures, to build/bridge-bench/RESULTS-<time>.md."""
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
BUILD = os.environ.get("BUILD", os.path.join(ROOT, "build"))
os.environ.setdefault("TRAINBUSD", os.path.join(BUILD, "trainbusd"))
os.environ.setdefault("TRAINBUS_BRIDGE", os.path.join(BUILD, "trainbus-bridge"))
os.environ.setdefault("TRAINBUS_CLI", os.path.join(BUILD, "trainbus"))
os.environ.setdefault("TB_SOURCE_DIR", ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "bridge"))
import bridge_util as U  # noqa: E402

RUNS = int(os.environ.get("RUNS", "3"))
# The demo job on 5x its data: epochs of about 0.7 s, so that observers see
# a few lifecycle events a second, as a real job would give them, plus the
# sampled batch events (every EVERY-th batch: 10 per epoch and event name).
N_PER_CLASS = int(os.environ.get("N_PER_CLASS", "25000"))
EPOCHS = int(os.environ.get("EPOCHS", "10"))
N_NATS = int(os.environ.get("N_NATS", "1000"))
N_MQTT = int(os.environ.get("N_MQTT", "100"))
EVERY = int(os.environ.get("EVERY", "125"))
OUTAGE_S = float(os.environ.get("OUTAGE_S", "2.5"))
KERNELS = os.environ.get("KERNELS", "env,native").split(",")
PIN = os.environ.get("PIN", "1") == "1" and os.cpu_count() and os.cpu_count() >= 2
FANOUT = os.path.join(BUILD, "tests", "bench", "bridge", "fanout_sub")
TIMEOUT = 300


def pin(pid, cpus):
    """Every thread of pid to cpus (threads made later inherit it)."""
    if not PIN:
        return
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass
    except OSError:
        pass


def cpu_s(pid, main_thread=False):
    """CPU seconds a process has used, its exited threads included; or only
    its main thread's (trainbusd's loop: encoding, logging, fan-out; the
    trainer is another thread)."""
    path = "/proc/%d/task/%d/stat" % (pid, pid) if main_thread else "/proc/%d/stat" % pid
    try:
        st = open(path).read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")


def env_for(kernels):
    e = dict(os.environ)
    if kernels == "native":
        e.pop("OPENBLAS_CORETYPE", None)
        e.pop("OPENBLAS_L2_SIZE", None)
    return e


class Daemon(U.Daemon):
    def __init__(self, env, **kw):
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        try:
            super().__init__(**kw)
        finally:
            os.environ.clear()
            os.environ.update(saved)


def stall(broker, after_s, seconds):
    """A thread that stops broker (SIGSTOP) after_s from now for seconds,
    then continues it (also if the run ends first)."""
    import signal
    import threading

    def go():
        time.sleep(after_s)
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(broker.pid, signal.SIGCONT)
    t = threading.Thread(target=go)
    t.start()
    return t


def epoch_stall(events):
    """The slowest epoch's duration over the median epoch's."""
    begin, dur = {}, []
    for e in events:
        if e["event"] == "epoch_begin":
            begin[e["epoch"]] = e["time"]
        elif e["event"] == "epoch_end" and e["epoch"] in begin:
            dur.append(e["time"] - begin.pop(e["epoch"]))
    return max(dur) / statistics.median(dur)


def configs():
    """(name, observers' mode, observers, broker stalled) in the order run."""
    out = [("baseline", None, 0, False),
           ("direct-%d" % N_NATS, "trainbus", N_NATS, False),
           ("nats", "nats", N_NATS, False),
           ("direct-%d" % N_MQTT, "trainbus", N_MQTT, False),
           ("mqtt", "mqtt", N_MQTT, False),
           ("nats-1", "nats", 1, False),
           ("nats-stop", "nats", 1, True)]
    return [c for i, c in enumerate(out) if c[0] not in [d[0] for d in out[:i]]]


def one(cfg, kernels, round_no, brokers, base_wall=None):
    """One run of cfg (an element of configs()); returns its figures.
    base_wall: this round's baseline training time (where nats-stop puts its
    outage: in the middle)."""
    config, mode, n, stalled = cfg
    env = env_for(kernels)
    job = U.demo_job(EPOCHS)
    job["data"]["n_per_class"] = N_PER_CLASS
    procs = []
    try:
        d = Daemon(env)
        procs.append(d)
        pin(d.pid, {0})
        if config == "baseline":
            with d.client("controller") as c:
                c.submit(job)
            d.wait_state("finished", timeout=TIMEOUT)
            hist = d.history()
            return {"wall": U.train_wall(hist), "daemon_cpu": cpu_s(d.pid, True),
                    "stall": epoch_stall(hist)}
        ns = "b%s%d%s" % (kernels[0], round_no, config.replace("-", ""))
        if mode == "trainbus":
            port = int(d.addr.rsplit(":", 1)[1])
        else:
            broker = brokers[mode]
            b = U.Bridge(broker.url(), d, ns=ns, args=["--every", str(EVERY), "--batch-hz", "0",
                                                       "--quiet"])
            procs.append(b)
            pin(b.pid, {1})
            U.wait_for(lambda: "following" in b.text() or not b.alive(), 30)
            port = broker.port
        sub = subprocess.Popen([FANOUT, mode, str(port), str(n), ns, str(EVERY), str(TIMEOUT)],
                               stdout=subprocess.PIPE, text=True, preexec_fn=U._die_with_parent)
        pin(sub.pid, {1})
        line = sub.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError("%s: fanout_sub did not get ready: %r" % (config, line))
        with d.client("controller") as c:
            c.submit(job)
        staller = None
        if stalled:
            staller = stall(brokers["nats"], max(0.0, (base_wall or 6.0) / 2 - OUTAGE_S / 2),
                            OUTAGE_S)
        out = sub.stdout.read()
        if staller:
            staller.join()
        sub.wait(TIMEOUT)
        res = json.loads(out.strip().splitlines()[-1])
        d.wait_state("finished", timeout=TIMEOUT)
        hist = d.history()
        res["wall"] = U.train_wall(hist)
        res["stall"] = epoch_stall(hist)
        res["daemon_cpu"] = cpu_s(d.pid, True)
        res["bridge_cpu"] = cpu_s(procs[1].pid) if len(procs) > 1 else 0.0
        return res
    finally:
        for p in reversed(procs):
            p.stop()


def table(kernels, results, base):
    base_cpu = statistics.median(r["daemon_cpu"] for r in results["baseline"])
    rows = ["| %s kernels | observers | deliveries/s | latency p50 / p99 | CPU on the trainer's "
            "machine besides training | training slowdown | slowest / median epoch |" % kernels,
            "|---|---|---|---|---|---|---|"]
    names = {"nats": "trainbus-bridge -> NATS 2.9 (JetStream)",
             "nats-1": "trainbus-bridge -> NATS 2.9 (JetStream)",
             "nats-stop": "the same, nats-server stopped %.1f s mid-run" % OUTAGE_S,
             "mqtt": "trainbus-bridge -> mosquitto 2.0",
             "direct-%d" % N_NATS: "trainbusd direct",
             "direct-%d" % N_MQTT: "trainbusd direct"}
    med_of = lambda runs, k: statistics.median(r[k] for r in runs)  # noqa: E731
    rows.append("| no observer, no bridge (baseline: %.2f s of training) | 0 | | | | | %.2f |"
                % (base, med_of(results["baseline"], "stall")))
    for config, _, n, _ in configs():
        runs = results[config]
        if config == "baseline":
            continue
        med = lambda k: med_of(runs, k)  # noqa: E731
        extra = statistics.median(r["daemon_cpu"] + r["bridge_cpu"] for r in runs) - base_cpu
        rows.append("| %s | %d | %s | %s / %s ms | %.2f s (%.0f %% of a core) | %+.1f %% | %.2f |"
                    % (names[config], n, "{:,.0f}".format(med("delivered_per_s")),
                       "%.2f" % (med("p50_us") / 1000), "%.2f" % (med("p99_us") / 1000),
                       extra, 100 * extra / med("wall"), (med("wall") / base - 1) * 100,
                       med("stall")))
    return "\n".join(rows)


def main():
    import signal
    signal.signal(signal.SIGTERM, lambda *a: sys.exit("terminated"))  # the finally blocks stop servers
    if not os.access(FANOUT, os.X_OK):
        sys.exit("build %s first (cmake --build build)" % FANOUT)
    brokers = {"nats": U.NatsServer(), "mqtt": U.Mosquitto()}
    for b in brokers.values():
        pin(b.pid, {1})
    cfgs = configs()
    report = ["# trainbus-bridge benchmark",
              "",
              "%s; job: the demo (spirals, 3x256 MLP, one thread) on %d points a class, %d "
              "epochs; observers follow lifecycle events and every %d-th batch event; medians "
              "of %d rounds, interleaved; %s." % (time.strftime("%Y-%m-%d %H:%M"), N_PER_CLASS,
                                                   EPOCHS, EVERY, RUNS,
                       "trainbusd on CPU 0, bridge, broker and observers on CPU 1" if PIN
                       else "no pinning"), ""]
    raw = {}
    try:
        for kernels in KERNELS:
            results = {c[0]: [] for c in cfgs}
            for r in range(RUNS):
                for cfg in cfgs:
                    base_wall = results["baseline"][-1]["wall"] if results["baseline"] else None
                    res = one(cfg, kernels, r, brokers, base_wall)
                    results[cfg[0]].append(res)
                    print("%s round %d %s: %s" % (kernels, r, cfg[0], json.dumps(res)),
                          flush=True)
            base = statistics.median(x["wall"] for x in results["baseline"])
            t = table(kernels, results, base)
            print("\n" + t + "\n\nbaseline training %.2f s (median)\n" % base, flush=True)
            report += [t, "", "Baseline (no observer, no bridge): %.2f s of training, median. "
                       "CPU besides training: the CPU time of the daemon's loop thread (encoding, "
                       "logging, fan-out) and of the bridge, less the baseline loop's." % base, ""]
            raw[kernels] = results
    finally:
        for b in brokers.values():
            b.stop()
    out = os.path.join(BUILD, "bridge-bench")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "RESULTS-%s.md" % time.strftime("%Y%m%d-%H%M%S"))
    with open(path, "w") as f:
        f.write("\n".join(report) + "\n\n## Raw\n\n```\n" + json.dumps(raw, indent=1) + "\n```\n")
    print("written to", path)


if __name__ == "__main__":
    main()
