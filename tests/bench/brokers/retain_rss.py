#!/usr/bin/env python3
"""A long-lived daemon's memory against the runs it has trained
(run_retain_ab.sh): starts TRAINBUSD (no state, no job, on 127.0.0.1:0)
with the given extra arguments, trains N copies of a small job one after
another (7,608 events each, about 1.9 MB retained unbounded), and prints
the daemon's RSS and what its status says it retains every 10 runs.

    retain_rss.py TRAINBUSD N [TRAINBUSD-ARGS...]
"""
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "clients", "python"))
from trainbus import Client  # noqa: E402

JOB = {"name": "rss", "seed": 5, "threads": 1,
       "data": {"source": "spirals", "n_per_class": 750, "noise": 0.15, "scale": "standard"},
       "model": {"layers": [{"type": "dense", "units": 64, "activation": "relu"},
                            {"type": "dense", "units": 2, "activation": "softmax"}]},
       "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"],
       "optimizer": {"name": "adam", "learning_rate": 0.003},
       "epochs": 20, "batch_size": 8, "validation_split": 0.2}


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return -1


def main():
    binary, n, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    p = subprocess.Popen([binary, "--no-state", "--no-job", "--listen", "127.0.0.1:0",
                          "--token", "rss", "--quiet"] + extra,
                         stderr=subprocess.PIPE, text=True)
    try:
        addr = None
        for line in p.stderr:
            m = re.search(r"listening on (\S+)", line)
            if m:
                addr = m.group(1)
                break
        c = Client(addr, token="rss", role="controller")
        for i in range(n):
            run = c.submit(JOB)
            while c.status(run)["state"] not in ("finished", "failed"):
                time.sleep(0.05)
            if (i + 1) % 10 == 0:
                st = c.status()
                print(f"runs={i + 1} rss_mb={rss_mb(p.pid)} events={st['events']} "
                      f"retained_bytes={st.get('retained_bytes', -1)}", flush=True)
    finally:
        p.terminate()
        p.wait()


if __name__ == "__main__":
    main()
