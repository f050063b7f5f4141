#!/usr/bin/env python3
"""The seed's logging callback (examples/logging_callback.c) as a remote
callback: prints every metric after each batch and after each epoch.

Written exactly as a Keras callback; only the base class and the last line
differ. It only reads, so it runs without lockstep and never slows training.

    python3 logging_callback.py [--connect HOST:PORT] [--token TOKEN] [--run ID]
"""
import argparse

import trainbus


class LoggingCallback(trainbus.RemoteCallback):  # was keras.callbacks.Callback
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        print("epoch %d batch %d:" % (self.epoch, batch) + "".join(
            " %s=%.4f" % (k, v) for k, v in logs.items()), flush=True)

    def on_epoch_end(self, epoch, logs=None):
        print("epoch %d end:" % epoch + "".join(
            " %s=%.4f" % (k, v) for k, v in logs.items()), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connect")
    ap.add_argument("--token")
    ap.add_argument("--run")
    a = ap.parse_args()
    cb = LoggingCallback()
    cb.epoch = 0
    state = trainbus.run_callback(cb, addr=a.connect, token=a.token, run=a.run, lockstep=False)
    print("run ended:", state)
