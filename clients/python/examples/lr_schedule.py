#!/usr/bin/env python3
"""Lowers a run's learning rate from outside, on a schedule: every N epochs
(--every-epochs, default 5) multiply it by --factor (default 0.5), down to
--min-lr. Training is never held: each change is an ordinary set_lr call,
answered once the daemon has applied it at the next batch boundary.

    python3 lr_schedule.py [--connect HOST:PORT] [--token TOKEN] [--run ID]
"""
import argparse

import trainbus
from trainbus.client import FINAL_STATES


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connect")
    ap.add_argument("--token")
    ap.add_argument("--run")
    ap.add_argument("--every-epochs", type=int, default=5)
    ap.add_argument("--factor", type=float, default=0.5)
    ap.add_argument("--min-lr", type=float, default=1e-6)
    a = ap.parse_args()
    with trainbus.Client(a.connect, a.token, role="controller", name="lr_schedule") as c:
        run = a.run
        if run is None:
            active = [r["run"] for r in c.runs() if r["state"] not in FINAL_STATES]
            if len(active) != 1:
                raise SystemExit("lr_schedule: name the run with --run (active: %s)" % active)
            run = active[0]
        info = c.status(run)
        lr = info.get("lr")
        for ev in c.subscribe(runs=[run], events=["epoch_end", "state"],
                              since_seq=info["last_seq"] + 1, reconnect=60):
            if ev.event == "state":
                print("run %s %s" % (run, ev.state))
                continue
            lr = ev.logs.get("lr", lr)
            done = ev.epoch + 1
            if lr is not None and done % a.every_epochs == 0 and lr * a.factor >= a.min_lr:
                try:
                    res = c.set_lr(run, lr * a.factor)
                except trainbus.RemoteError as e:
                    # The run ended before a batch boundary could apply it.
                    print("after epoch %d: not applied (%s)" % (done, e), flush=True)
                    continue
                at = res.get("applied_at") or {}
                print("after epoch %d: lr %g -> %g (applied at epoch %s, batch %s)" % (
                    done, lr, lr * a.factor, at.get("epoch"), at.get("batch")), flush=True)
                lr = lr * a.factor


if __name__ == "__main__":
    main()
