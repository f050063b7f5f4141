"""trainbus-callback: runs a RemoteCallback class of yours against a run of a
daemon, without writing the connection code (``python3 -m trainbus`` does the
same).

    trainbus-callback mymodule:PlateauLR [--connect ADDR] [--token TOKEN]
                      [--run ID] [--no-lockstep] [--path DIR]
                      [--tls] [--cacert FILE] [--insecure] [--cert FILE --key FILE]

MODULE:CLASS names a subclass of trainbus.RemoteCallback (a module on the
Python path, or a .py file's name with --path DIR); it is made with no
arguments. Exit codes: 0 the run finished, 1 it ended otherwise (stopped,
cancelled, failed) or the daemon refused, 2 bad arguments, 3 cannot connect.
"""
import argparse
import importlib
import sys

from .callback import RemoteCallback, run_callback
from .client import ConnectionLost, RemoteError, TrainbusError


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="trainbus-callback",
        description="Runs a trainbus.RemoteCallback subclass against a run of a daemon.")
    p.add_argument("callback", metavar="MODULE:CLASS", help="e.g. plateau_lr:PlateauLR")
    p.add_argument("--connect", metavar="ADDR", help="HOST:PORT (default: $TRAINBUS_ADDR, "
                   "else the state directory's address file)")
    p.add_argument("--token", help="the control token (default: $TRAINBUS_TOKEN, else the "
                   "state directory's token file)")
    p.add_argument("--run", metavar="ID", help="the run (default: the only active run)")
    p.add_argument("--no-lockstep", action="store_true",
                   help="do not hold the trainer at the callback's hooks")
    p.add_argument("--path", metavar="DIR", action="append", default=[],
                   help="also import modules from DIR (repeatable)")
    p.add_argument("--tls", action="store_true",
                   help="connect with TLS (as a tls://HOST:PORT address does)")
    p.add_argument("--cacert", metavar="FILE",
                   help="CA certificates (PEM) for the server's (default: $TRAINBUS_CACERT, "
                   "else the system's)")
    p.add_argument("--insecure", action="store_true",
                   help="do not check the server's certificate (warns)")
    p.add_argument("--cert", metavar="FILE", help="a client certificate (PEM)")
    p.add_argument("--key", metavar="FILE", help="the client certificate's key (PEM)")
    a = p.parse_args(argv)
    module, _, cls = a.callback.partition(":")
    if not module or not cls:
        p.error("expected MODULE:CLASS, got %r" % a.callback)
    sys.path[:0] = a.path or ["."]
    try:
        klass = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        p.error("cannot load %s: %s" % (a.callback, e))
    if not (isinstance(klass, type) and issubclass(klass, RemoteCallback)):
        p.error("%s is not a trainbus.RemoteCallback subclass" % a.callback)
    try:
        state = run_callback(klass(), addr=a.connect, token=a.token, run=a.run,
                             lockstep=not a.no_lockstep, tls=a.tls, cafile=a.cacert,
                             insecure=a.insecure, certfile=a.cert, keyfile=a.key)
    except ConnectionLost as e:
        print("trainbus-callback: %s" % e, file=sys.stderr)
        return 3
    except OSError as e:
        print("trainbus-callback: cannot connect: %s" % e, file=sys.stderr)
        return 3
    except (RemoteError, TrainbusError) as e:
        print("trainbus-callback: %s" % e, file=sys.stderr)
        return 1
    print("trainbus-callback: the run ended: %s" % state)
    return 0 if state == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
