#!/usr/bin/env python3
"""The seed's manual training loop, in PyTorch, on the bus.

The data is the seed example, x = [1, 2, 3, 4] and y = [0, 0, 1, 1]; the
model is one sigmoid unit trained with binary crossentropy and SGD, in
batches of two. The loop is an ordinary PyTorch loop; a trainbus
TorchPublisher is called at Keras's hooks, so the run shows in `trainbus
runs`, `watch`, the dashboard and the history like a run the daemon trains,
and `trainbus set-lr 0.005` changes the optimizer's rate at the next batch
(`trainbus stop`, `pause`, `resume` work too):

    trainbusd --no-job &                       # or any running daemon
    python3 examples/torch_manual_loop.py --epochs 2000 --batch-sleep 0.01 &
    trainbus watch                             # from another shell
    trainbus set-lr 0.005

Options: --connect / --token / --state-dir (as the trainbus CLI), --epochs,
--batch-sleep SECONDS (to watch it at a human pace), --local-plateau (run the
PlateauLR callback below inside the loop), --wait-lockstep SECONDS (start
training once a lockstep subscriber is there, e.g. the same PlateauLR run
remotely with trainbus.run_callback). It prints the run id first, then one
line per epoch: `epoch E loss L lr R`.
"""

import argparse
import os
import sys
import time

import torch

try:
    import trainbus
except ImportError:  # running from a checkout
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients",
                                    "python"))
    import trainbus


class PlateauLR(trainbus.RemoteCallback):
    """Keras's ReduceLROnPlateau (keras/src/callbacks/reduce_lr_on_plateau.py,
    mode "min"), written against the Keras callback API, so the same class
    runs inside the loop (set_model with the optimizer) or in another process
    (trainbus.run_callback, in lockstep at epoch_end)."""

    def __init__(self, monitor="loss", factor=0.5, patience=1, min_delta=1e-4, cooldown=0,
                 min_lr=0.0):
        super().__init__()
        self.monitor, self.factor, self.patience = monitor, factor, patience
        self.min_delta, self.cooldown, self.min_lr = min_delta, cooldown, min_lr
        self.best, self.wait, self.cooldown_counter = float("inf"), 0, 0
        self.rates = []  # the rate after each epoch_end, for comparisons

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if current < self.best - self.min_delta:
            self.best, self.wait = current, 0
        elif not self.cooldown_counter > 0:
            self.wait += 1
            if self.wait >= self.patience:
                old_lr = float(self.model.optimizer.learning_rate)
                if old_lr > self.min_lr:
                    self.model.optimizer.learning_rate = max(old_lr * self.factor, self.min_lr)
                    self.cooldown_counter, self.wait = self.cooldown, 0
        self.rates.append(float(self.model.optimizer.learning_rate))


class _Optimizer:
    """model.optimizer for a callback run in the loop: the torch rate."""

    def __init__(self, opt):
        self._opt = opt

    @property
    def learning_rate(self):
        return self._opt.param_groups[0]["lr"]

    @learning_rate.setter
    def learning_rate(self, lr):
        for g in self._opt.param_groups:
            g["lr"] = float(lr)


class _Model:
    def __init__(self, opt):
        self.optimizer = _Optimizer(opt)
        self.stop_training = False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connect")
    ap.add_argument("--token")
    ap.add_argument("--state-dir")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--batch-sleep", type=float, default=0.0)
    ap.add_argument("--local-plateau", action="store_true")
    ap.add_argument("--wait-lockstep", type=float, default=0.0)
    a = ap.parse_args(argv)

    torch.manual_seed(42)
    torch.set_num_threads(1)
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    y = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    model = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Sigmoid())
    opt = torch.optim.SGD(model.parameters(), lr=a.lr)
    loss_fn = torch.nn.BCELoss()
    batch, steps = 2, 2

    pub = trainbus.TorchPublisher(opt, addr=a.connect, token=a.token, state_dir=a.state_dir,
                                  name="torch-manual-loop", epochs=a.epochs, steps=steps,
                                  model=str(model), client_name="torch_manual_loop")
    print("run", pub.run, flush=True)
    if a.wait_lockstep > 0 and not pub.wait_lockstep(a.wait_lockstep):
        print("no lockstep subscriber came; training anyway", file=sys.stderr)
    local = []
    if a.local_plateau:
        cb = PlateauLR(patience=1, factor=0.5, min_delta=10.0, min_lr=0.05)
        cb.set_model(_Model(opt))
        local.append(cb)

    pub.on_train_begin()
    logs = {}
    for epoch in range(a.epochs):
        pub.on_epoch_begin(epoch)
        seen, total = 0, 0.0
        for b in range(steps):
            pub.on_train_batch_begin(b)
            xb, yb = x[b * batch:(b + 1) * batch], y[b * batch:(b + 1) * batch]
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            seen += len(xb)
            total += loss.item() * len(xb)
            logs = {"loss": total / seen, "lr": opt.param_groups[0]["lr"]}
            pub.on_train_batch_end(b, logs)  # a set-lr applies here, for the next batch
            if pub.stop_training:  # Keras's stop: the epoch ends after this batch
                break
            if a.batch_sleep:
                time.sleep(a.batch_sleep)
        logs = {"loss": total / seen, "lr": opt.param_groups[0]["lr"]}
        for cb in local:
            cb.on_epoch_end(epoch, logs)
        pub.on_epoch_end(epoch, logs)
        print("epoch %d loss %.6f lr %r" % (epoch, logs["loss"], opt.param_groups[0]["lr"]),
              flush=True)
        if pub.stop_training:
            break
    pub.on_train_end(logs)
    pub.finish()
    print("weights", [round(float(p), 6) for p in model.parameters()], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
