#!/usr/bin/env python3
"""Steer a run through NATS: set its learning rate, pause and resume it.

The request goes to tb.NS.run.RUN.ctl.METHOD; trainbus-bridge calls the
daemon and replies with its answer (docs/BRIDGE.md). The NATS user needs
publish permission on tb.NS.run.*.ctl.> (docs/bridge/nats-server.conf's
controller).

    python3 nats_control.py nats://carol:SECRET@127.0.0.1:4222 acme r1 0.0005
"""
import sys

import trainbus
import trainbus.nats as tn


def main():
    if len(sys.argv) != 5:
        sys.exit("usage: nats_control.py URL NAMESPACE RUN LEARNING_RATE")
    url, ns, run, lr = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    try:
        res = tn.call(url, run, "set_lr", {"lr": lr}, ns=ns)
        at = res["applied_at"]
        print("lr %g -> %g, applied at epoch %d, batch %d (event seq %d)"
              % (res["old"], res["lr"], at["epoch"] + 1, at["batch"], at["seq"]))
        tn.call(url, run, "pause", ns=ns)
        print("paused; status:", tn.status(url, run, ns=ns))
        tn.call(url, run, "resume", ns=ns)
        print("resumed")
    except tn.NoResponders as e:
        sys.exit(str(e))
    except trainbus.RemoteError as e:  # the daemon's answer: invalid_params, invalid_state, ...
        sys.exit("%s: %s" % (e.name, e.message))


if __name__ == "__main__":
    main()
