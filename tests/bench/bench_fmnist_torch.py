#!/usr/bin/python3
"""PyTorch twin of bench_fmnist.c (issue 2), printing the same line or JSON keys.

The model and training are the C benchmark's: Linear 784-256-128-10 with ReLU,
glorot-uniform weights and zero biases (Keras's and trainbus's Dense init,
instead of PyTorch's default), CrossEntropyLoss on the logits (the fused form
of softmax + sparse categorical crossentropy, mean over the batch), Adam with
lr 1e-3 and eps 1e-7 (Keras's epsilon), batch 128, reshuffled every epoch.
Data are read from the same IDX .gz files with gzip + numpy and divided by 255.

The loop is the lean idiomatic one: the whole training set is one tensor and
each batch is an index_select of a random permutation, with no DataLoader
(whose per-sample collation would make PyTorch look slower than it is). Like
fit(), it accumulates the running loss and accuracy of every batch.

Threads: torch.set_num_threads(N) sets the OpenMP pool, but Debian's torch
does its float matrix products in OpenBLAS (libblas.so.3, the pthread build,
the same library trainbus links), whose pool torch does not size. So the
script also calls openblas_set_num_threads(N) through ctypes when OpenBLAS is
loaded, and reports both counts. Run it with /usr/bin/python3 (Debian's
python3-torch); other interpreters on PATH may lack torch.
"""
import argparse
import ctypes
import gzip
import json
import os
import struct
import sys
import time

import numpy as np

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
BATCH_SIZE = 128
SMOKE_ROWS = 2000
EXIT_SKIP = 77


def read_idx(path):
    """An IDX ubyte file (optionally .gz) as a numpy array of its shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an IDX ubyte file")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {arr.size} bytes")
    return arr.reshape(dims)


def load_split(data_dir, split):
    x = read_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte.gz"))
    x = x.reshape(x.shape[0], -1).astype(np.float32) * np.float32(1.0 / 255.0)
    return x, y.astype(np.int64)


def openblas_lib():
    """The OpenBLAS already loaded by torch, or None."""
    for name in ("libopenblas.so.0", "libblas.so.3"):
        try:
            lib = ctypes.CDLL(name)
            lib.openblas_get_num_threads.restype = ctypes.c_int
            return lib
        except (OSError, AttributeError):
            continue
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--data", default=DEFAULT_DATA_DIR)
    a = p.parse_args()
    epochs = a.epochs if a.epochs is not None else (1 if a.smoke else 10)
    if epochs < 1 or a.threads < 0:
        p.error("--epochs must be >= 1 and --threads >= 0")

    for split in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            path = os.path.join(a.data, f"{split}-{kind}-ubyte.gz")
            if not os.access(path, os.R_OK):
                print(f"bench_fmnist_torch: {path}: not readable "
                      "(apt-get install dataset-fashion-mnist)", file=sys.stderr)
                return EXIT_SKIP

    import torch
    from torch import nn

    blas = openblas_lib()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
        if blas is not None:
            blas.openblas_set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    t0 = time.monotonic()
    xtr, ytr = load_split(a.data, "train")
    xte, yte = load_split(a.data, "t10k")
    if a.smoke:
        xtr, ytr = xtr[:SMOKE_ROWS], ytr[:SMOKE_ROWS]
    xtr, ytr = torch.from_numpy(np.ascontiguousarray(xtr)), torch.from_numpy(ytr)
    xte, yte = torch.from_numpy(xte), torch.from_numpy(yte)
    load_s = time.monotonic() - t0

    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                          nn.Linear(128, 10))
    for mod in model:
        if isinstance(mod, nn.Linear):
            nn.init.xavier_uniform_(mod.weight)
            nn.init.zeros_(mod.bias)
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
    gen = torch.Generator().manual_seed(a.seed)

    n = xtr.shape[0]
    epoch_s = []
    train_wall = train_cpu = 0.0
    train_loss = train_acc = 0.0
    model.train()
    for _ in range(epochs):
        w0, c0 = time.monotonic(), time.process_time()
        perm = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros((), dtype=torch.float64)
        hits = torch.zeros((), dtype=torch.int64)
        for start in range(0, n, BATCH_SIZE):
            idx = perm[start : start + BATCH_SIZE]
            xb, yb = xtr.index_select(0, idx), ytr.index_select(0, idx)
            logits = model(xb)
            loss = loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                loss_sum += loss.detach() * yb.shape[0]
                hits += (logits.argmax(1) == yb).sum()
        wall = time.monotonic() - w0
        train_cpu += time.process_time() - c0
        train_wall += wall
        epoch_s.append(wall)
        train_loss, train_acc = loss_sum.item() / n, hits.item() / n

    t1 = time.monotonic()
    model.eval()
    with torch.no_grad():
        loss_sum, hits = 0.0, 0
        for start in range(0, xte.shape[0], BATCH_SIZE):
            xb, yb = xte[start : start + BATCH_SIZE], yte[start : start + BATCH_SIZE]
            logits = model(xb)
            loss_sum += loss_fn(logits, yb).item() * yb.shape[0]
            hits += (logits.argmax(1) == yb).sum().item()
    eval_s = time.monotonic() - t1
    acc, loss = hits / xte.shape[0], loss_sum / xte.shape[0]

    sps = n * epochs / train_wall if train_wall > 0 else 0.0
    cores = train_cpu / train_wall if train_wall > 0 else 0.0
    blas_threads = blas.openblas_get_num_threads() if blas is not None else -1
    kernel = "?"
    if blas is not None:
        try:
            blas.openblas_get_corename.restype = ctypes.c_char_p
            kernel = blas.openblas_get_corename().decode()
        except AttributeError:
            pass
    if a.json:
        print(json.dumps({
            "impl": "torch", "kernel": kernel, "threads_requested": a.threads,
            "threads_used": torch.get_num_threads(), "blas_threads": blas_threads,
            "torch_version": torch.__version__, "epochs": epochs, "batch_size": BATCH_SIZE,
            "n_train": n, "n_test": int(xte.shape[0]), "train_s": round(train_wall, 4),
            "samples_per_s": round(sps, 1), "cpu_per_wall": round(cores, 3),
            "test_acc": round(acc, 4), "test_loss": round(loss, 4),
            "train_loss": round(train_loss, 4), "train_acc": round(train_acc, 4),
            "load_s": round(load_s, 3), "eval_s": round(eval_s, 3),
            "epoch_s": [round(s, 4) for s in epoch_s]}, separators=(",", ":")))
    else:
        print(f"torch     threads={torch.get_num_threads()} (requested {a.threads}, "
              f"openblas {blas_threads})  epochs={epochs}  rows={n}  train_s={train_wall:.2f}  "
              f"samples/s={sps:.0f}  cpu/wall={cores:.2f}  test_acc={acc:.4f}  "
              f"test_loss={loss:.4f}  (load {load_s:.2f} s, eval {eval_s:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
