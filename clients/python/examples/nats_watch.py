#!/usr/bin/env python3
"""Follow a run through NATS, as a late joiner: its history first, then live.

trainbus-bridge publishes the daemon's runs into NATS (docs/BRIDGE.md); this
program needs only the broker, not the daemon, and only the standard library.

    trainbus-bridge --ns acme nats://127.0.0.1:4222 &
    python3 nats_watch.py nats://127.0.0.1:4222 acme        # the active run
    python3 nats_watch.py nats://alice:SECRET@host:4222 acme r3
"""
import sys

import trainbus.nats as tn


def main():
    url = sys.argv[1] if len(sys.argv) > 1 else "nats://127.0.0.1:4222"
    ns = sys.argv[2] if len(sys.argv) > 2 else "default"
    run = sys.argv[3] if len(sys.argv) > 3 else None
    if run is None:
        runs = (tn.runs(url, ns=ns) or {}).get("runs", [])
        active = [r["run"] for r in runs if r["state"] not in ("finished", "stopped",
                                                                "cancelled", "failed")]
        if not runs:
            sys.exit("no run list on %s for namespace %s: is trainbus-bridge running?" % (url, ns))
        run = active[0] if active else runs[-1]["run"]
    for ev in tn.follow(url, run, ns=ns, since_seq=1, events=["epoch_end", "state", "control"]):
        if ev.event == "epoch_end":
            logs = " - ".join("%s: %.4f" % kv for kv in ev.logs.items())
            print("run %s epoch %d - %s" % (run, ev.epoch + 1, logs))
        elif ev.event == "state":
            print("run %s: %s -> %s" % (run, ev.prev_state, ev.state))
        else:
            print("run %s: %s %s at epoch %d, batch %d by %s" % (
                run, ev.action, ev.get("value", ""), ev.epoch + 1, ev.get("batch", -1), ev.by))


if __name__ == "__main__":
    main()
