"""Sequential (or permuted-sequential) digits classification with WCRNNs: the paper's sMNIST on 8x8 digits.

    python examples/sequential_digits.py                  # r in {0.95, 1, 1.01}, a few minutes on 2 CPU cores
    python examples/sequential_digits.py --permuted       # psDigits
    python examples/sequential_digits.py --quick          # the CI smoke run

scikit-learn's 1797 8x8 digits (real data, no download) are read one pixel per step (T = 64) by a
FusedWCRNN (gamma = 0.01, nn.RNN's default weights) with a linear readout of the last state; trained
with Adam and cross-entropy on a stratified 80/20 split. For each residual r the script reports the test
accuracy after every epoch, the best and final test accuracy, the epochs to the paper's MNIST minimal
performance (50 % test accuracy) and the wall time, and plots the learning curves.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from tqdm import tqdm

import _common  # noqa: E402  (examples/_common.py: a source checkout's package first)

from wcrnn_kernels import init, tasks  # noqa: E402
from wcrnn_kernels.module import FusedWCRNN  # noqa: E402

MP_ACCURACY = 0.5  # the paper's minimal performance on MNIST


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--r", default="0.95,1.0,1.01", help="comma-separated scalar residuals to train")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--gamma", type=float, default=init.PAPER_GAMMA)
    p.add_argument("--nonlinearity", default="tanh", choices=("tanh", "relu"))
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    p.add_argument("--permuted", action="store_true", help="permuted-sequential digits (psDigits)")
    p.add_argument("--seed", type=int, default=0)
    _common.add_threads_argument(p)
    p.add_argument("--backend", default="auto")
    p.add_argument("--train-limit", type=int, default=0, help="use only the first N training sequences")
    p.add_argument("--quick", action="store_true", help="tiny run for CI: 1 epoch on 320 sequences, H = 16")
    p.add_argument("--out", default=None, help="PNG path (default examples/results/sequential_digits[_permuted].png; "
                   "with --quick examples/results/quick/)")
    a = p.parse_args(argv)
    if a.quick:
        a.r, a.hidden, a.epochs, a.train_limit = "1.0", 16, 1, 320
    a.r_values = [float(v) for v in a.r.split(",")]
    if a.out is None:
        a.out = _common.default_out("sequential_digits" + ("_permuted" if a.permuted else "") + ".png", a.quick)
    return a


@torch.no_grad()
def accuracy(model, x, y, batch=512):
    correct = 0
    for i in range(0, x.shape[0], batch):
        correct += (model(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum().item()
    return correct / x.shape[0]


def train_one(r, args, data):
    (xtr, ytr), (xte, yte) = data
    torch.manual_seed(args.seed)
    model = _common.LastStateReadout(FusedWCRNN(1, args.hidden, batch_first=True, r=r, gamma=args.gamma,
                                                nonlinearity=args.nonlinearity, backend=args.backend), 10)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    curve = [accuracy(model, xte, yte)]
    t0 = time.perf_counter()
    bar = tqdm(range(args.epochs), desc=f"r = {r:g}", unit="epoch")
    for _ in bar:
        model.train()
        perm = torch.randperm(xtr.shape[0], generator=g)
        for i in range(0, xtr.shape[0], args.batch):
            idx = perm[i:i + args.batch]
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        curve.append(accuracy(model, xte, yte))
        bar.set_postfix(test_acc=f"{curve[-1]:.3f}", loss=f"{loss.item():.3f}")
    wall = time.perf_counter() - t0
    reached = next((e for e, a in enumerate(curve) if a >= MP_ACCURACY), None)
    return dict(r=r, regime=init.regime_of(r), test_acc=curve, final_test_acc=curve[-1], best_test_acc=max(curve),
                train_acc=accuracy(model, xtr, ytr), epochs_to_50pct=reached, wall_time_s=wall,
                steps_per_epoch=-(-xtr.shape[0] // args.batch))


def main(argv=None):
    args = parse_args(argv)
    _common.apply_threads(args)
    data = tasks.sequential_digits(permuted=args.permuted, seed=args.seed)
    if args.train_limit:
        (xtr, ytr), test = data
        data = ((xtr[:args.train_limit], ytr[:args.train_limit]), test)
    results = [train_one(r, args, data) for r in args.r_values]
    task = "psDigits (permuted)" if args.permuted else "sDigits"
    print(f"\n{task}: H = {args.hidden}, gamma = {args.gamma}, {args.nonlinearity}, Adam lr = {args.lr}, "
          f"batch {args.batch}, {args.epochs} epochs of {results[0]['steps_per_epoch']} steps, "
          f"train/test {data[0][0].shape[0]}/{data[1][0].shape[0]}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| r | regime | final test acc | best test acc | train acc | epochs to 50 % | wall time (s) |")
    print("|---|---|---|---|---|---|---|")
    for res in results:
        e50 = res["epochs_to_50pct"] if res["epochs_to_50pct"] is not None else "not reached"
        print(f"| {res['r']:g} | {res['regime']} | {res['final_test_acc']:.3f} | {res['best_test_acc']:.3f} | "
              f"{res['train_acc']:.3f} | {e50} | {res['wall_time_s']:.0f} |")
    meta = {k: v for k, v in vars(args).items() if k not in ("out",)}
    meta.update(task=task, torch=torch.__version__, threads=torch.get_num_threads())
    _common.save(args.out, meta, results, lambda: plot(results, args, task))
    return results


def plot(results, args, task):
    plt = _common.pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for res in results:
        ax.plot(range(len(res["test_acc"])), res["test_acc"], "-o", ms=3,
                label=f"r = {res['r']:g} ({res['regime']}): best {res['best_test_acc']:.3f}")
    ax.axhline(MP_ACCURACY, color="gray", ls=":", lw=1, label="50 % (paper's MP)")
    ax.axhline(0.1, color="gray", ls="--", lw=0.8, label="chance")
    ax.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1),
           title=f"{task}, T = 64: H = {args.hidden}, gamma = {args.gamma:g}, Adam lr {args.lr:g}")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
