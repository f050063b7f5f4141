#!/usr/bin/env python3
"""The seed's plateau learning-rate callback (examples/plateau_lr.c) as a
remote callback: halve the learning rate when val_loss has not improved for
2 epochs, skipping epochs without validation data.

The class is what you would write for Keras; only the base class changed. It
runs in lockstep on epoch_end: the trainer waits for it at every epoch end,
and the new rate applies before the next epoch starts, as it would locally.

    python3 plateau_lr.py [--connect HOST:PORT] [--token TOKEN] [--run ID]
"""
import argparse
import math

import trainbus


class PlateauLR(trainbus.RemoteCallback):  # was keras.callbacks.Callback
    def __init__(self, patience=2, factor=0.5):
        super().__init__()
        self.patience = patience
        self.factor = factor
        self.best = math.inf
        self.wait = 0

    def on_epoch_end(self, epoch, logs=None):
        val_loss = (logs or {}).get("val_loss")
        if val_loss is None:
            print("epoch %d: no validation data, skipped" % epoch, flush=True)
            return
        lr = self.model.optimizer.learning_rate
        if val_loss < self.best:
            self.best = val_loss
            self.wait = 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.optimizer.learning_rate = lr * self.factor
                self.wait = 0
                print("epoch %d: val_loss %.4f has not improved on %.4f for %d epochs; lr -> %g"
                      % (epoch, val_loss, self.best, self.patience, lr * self.factor), flush=True)
                return
        print("epoch %d: val_loss %.4f (best %.4f, wait %d) lr %g"
              % (epoch, val_loss, self.best, self.wait, lr), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connect")
    ap.add_argument("--token")
    ap.add_argument("--run")
    a = ap.parse_args()
    state = trainbus.run_callback(PlateauLR(), addr=a.connect, token=a.token, run=a.run,
                                  lockstep=True)
    print("run ended:", state)
