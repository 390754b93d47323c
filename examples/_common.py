"""Plumbing the example scripts share: the source-checkout import, the readout model, threads, results files.

Not an example itself: the scripts import it (``import _common``), which works because Python puts a
script's own folder first on ``sys.path``. Importing it also makes a source checkout's ``wcrnn_kernels``
win over an older installed copy.
"""
from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn

# Run from a source checkout, use the checkout's package (not an older installed copy).
_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
if os.path.isdir(os.path.join(_ROOT, "wcrnn_kernels")):
    sys.path.insert(0, _ROOT)

HERE = os.path.dirname(os.path.abspath(__file__))


class LastStateReadout(nn.Module):
    """A recurrent network with a linear readout of its last layer's final state: head(h_n[-1])."""

    def __init__(self, rnn: nn.Module, out_features: int):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size, out_features)

    def forward(self, x):
        _, h = self.rnn(x)
        return self.head(h[-1])


def add_threads_argument(p) -> None:
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")


def apply_threads(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def write_json(out: str, meta: dict, results, **extra) -> str:
    """{meta, results, **extra} as JSON beside `out` (same name, .json), creating the folder: the path."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    path = os.path.splitext(out)[0] + ".json"
    with open(path, "w") as f:
        json.dump(dict(meta=meta, results=results, **extra), f, indent=1)
    return path


def default_out(filename: str, quick: bool) -> str:
    """Where an example writes by default: examples/results/<filename> (the committed results the README shows),
    or with --quick examples/results/quick/<filename> (git-ignored), so that a smoke run never replaces them."""
    return os.path.join(HERE, "results", "quick", filename) if quick else os.path.join(HERE, "results", filename)


def save(out: str, meta: dict, results, plot) -> None:
    """The end of an experiment: the numbers as JSON beside `out`, then the figure (`plot()` writes `out`)."""
    write_json(out, meta, results)
    plot()
    print(f"\nwrote {out} and {os.path.splitext(out)[0]}.json")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (the examples write PNGs, never open windows)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
