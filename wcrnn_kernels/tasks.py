"""Memory tasks as tensors: the adding problem, the copy task, sequential (permuted) 8x8 digits, MNIST IDX.

Everything is batch first, (N, T, C) inputs, for ``FusedWCRNN(..., batch_first=True)`` (or transpose to
time-major), and deterministic given a ``torch.Generator`` or a seed. Nothing here downloads anything:
the digits are the 8x8 images that scikit-learn ships, and ``load_mnist`` reads IDX files you already
have.
"""
from __future__ import annotations

import gzip
import math
import numbers
import os
import struct
from typing import Optional

import torch
from torch import Tensor

#: The paper's minimal performance (MP) on the adding problem: an RMS error of 0.05.
ADDING_THRESHOLD_RMS = 0.05


def _check_int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")


# ---------------------------------------------------------------------------------------------------------
# The adding problem
# ---------------------------------------------------------------------------------------------------------

def adding_problem(num_samples: int, seq_len: int = 100, *, generator: Optional[torch.Generator] = None,
                   dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """The adding problem (Hochreiter & Schmidhuber 1997; the paper's ADD100 / ADD400 at T = 100 / 400).

    Returns inputs (N, T, 2) and targets (N, 1). Channel 0 holds values uniform in [0, 1]; channel 1
    marks two positions with 1, one uniformly in the first half [0, T//2) and one in the second half
    [T//2, T). The target is the sum of the two marked values. Predicting the mean (1.0) gives an RMS
    error of sqrt(1/6) = 0.408 (``adding_baseline_rms``); the paper's threshold is 0.05
    (``ADDING_THRESHOLD_RMS``).
    """
    _check_int("num_samples", num_samples, 1)
    _check_int("seq_len", seq_len, 2)
    N, T = num_samples, seq_len
    values = torch.rand(N, T, generator=generator, dtype=torch.float64)
    half = T // 2
    first = torch.randint(0, half, (N,), generator=generator)
    second = torch.randint(half, T, (N,), generator=generator)
    markers = torch.zeros(N, T, dtype=torch.float64)
    rows = torch.arange(N)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    target = values[rows, first] + values[rows, second]
    return torch.stack((values, markers), -1).to(dtype), target.unsqueeze(-1).to(dtype)


def adding_baseline_rms() -> float:
    """RMS error of always predicting 1 (the target's mean): the std of the sum of two U(0,1), sqrt(1/6)."""
    return math.sqrt(1.0 / 6.0)


def rms_error(prediction: Tensor, target: Tensor) -> float:
    """Root mean squared error, the adding problem's metric."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction: shape {tuple(prediction.shape)} does not match target {tuple(target.shape)}")
    return float(torch.sqrt(torch.mean((prediction.detach().double() - target.detach().double()) ** 2)))


# ---------------------------------------------------------------------------------------------------------
# The copy task
# ---------------------------------------------------------------------------------------------------------

def copy_task(num_samples: int, delay: int = 100, *, num_symbols: int = 8, copy_len: int = 10,
              generator: Optional[torch.Generator] = None,
              dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """The copy task (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016; Orhan & Pitkow 2020).

    A sequence of ``copy_len`` symbols drawn uniformly from 1..K (K = ``num_symbols``) is followed by
    ``delay - 1`` blanks (0), a delimiter (K + 1) and ``copy_len`` blanks; after the delimiter the network
    must output the symbols in order. Length T = delay + 2 * copy_len.

    Returns inputs (N, T, K + 2), one-hot over {blank, 1..K, delimiter}, and targets (N, T) of class
    indices in 0..K: blank (0) everywhere except the last ``copy_len`` steps, which hold the symbols. Use
    cross-entropy over K + 1 classes; the memoryless baseline (blanks, then uniform guesses) has loss
    ``copy_baseline_loss(...)``.
    """
    _check_int("num_samples", num_samples, 1)
    _check_int("delay", delay, 1)
    _check_int("num_symbols", num_symbols, 1)
    _check_int("copy_len", copy_len, 1)
    N, K, L = num_samples, num_symbols, copy_len
    T = delay + 2 * L
    symbols = torch.randint(1, K + 1, (N, L), generator=generator)
    seq = torch.zeros(N, T, dtype=torch.long)
    seq[:, :L] = symbols
    seq[:, L + delay - 1] = K + 1
    target = torch.zeros(N, T, dtype=torch.long)
    target[:, T - L:] = symbols
    return torch.nn.functional.one_hot(seq, K + 2).to(dtype), target


def copy_baseline_loss(delay: int = 100, num_symbols: int = 8, copy_len: int = 10) -> float:
    """Mean cross-entropy per step of the best memoryless strategy: L log K / (delay + 2L), with L = copy_len
    and K = num_symbols (a copy_task sequence is delay + 2L steps long)."""
    return copy_len * math.log(num_symbols) / (delay + 2 * copy_len)


# ---------------------------------------------------------------------------------------------------------
# Sequential and permuted-sequential digits (scikit-learn's 8x8 digits: real data, no download)
# ---------------------------------------------------------------------------------------------------------

def pixel_permutation(num_pixels: int, seed: int = 0) -> Tensor:
    """The fixed permutation of pixel positions used by the permuted-sequential tasks (one per seed)."""
    _check_int("num_pixels", num_pixels, 1)
    return torch.randperm(num_pixels, generator=torch.Generator().manual_seed(seed))


def _stratified_split(labels: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in labels.unique(sorted=True).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_test = int(round(test_fraction * idx.numel()))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def sequential_digits(permuted: bool = False, *, test_fraction: float = 0.2, seed: int = 0,
                      permutation_seed: int = 0, dtype: torch.dtype = torch.float32):
    """Sequential (sDigits) or permuted-sequential (psDigits) classification of 8x8 digits, T = 64.

    scikit-learn's copy of the UCI optical digits (1797 images, 10 classes, pixel values 0..16) is
    scaled to [0, 1] and read one pixel per step in row-major order, like sequential MNIST; with
    ``permuted`` the pixels are read in the fixed order ``pixel_permutation(64, permutation_seed)``.
    The split is stratified by class and deterministic in ``seed``.

    Returns ((x_train (N_train, 64, 1), y_train (N_train,)), (x_test, y_test)), labels int64.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("sequential_digits needs scikit-learn (it ships the 8x8 digits): "
                          "pip install scikit-learn  (or pip install 'wcrnn-kernels[science]')") from e
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
    d = load_digits()
    x = torch.as_tensor(d.data, dtype=torch.float64) / 16.0  # (1797, 64), row-major pixels
    y = torch.as_tensor(d.target, dtype=torch.long)
    if permuted:
        x = x[:, pixel_permutation(64, permutation_seed)]
    x = x.unsqueeze(-1).to(dtype)
    tr, te = _stratified_split(y, test_fraction, seed)
    return (x[tr], y[tr]), (x[te], y[te])


# ---------------------------------------------------------------------------------------------------------
# MNIST from local IDX files
# ---------------------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: (">u1", torch.uint8), 0x09: (">i1", torch.int8), 0x0B: (">i2", torch.int16),
               0x0C: (">i4", torch.int32), 0x0D: (">f4", torch.float32), 0x0E: (">f8", torch.float64)}


def read_idx(path: str) -> Tensor:
    """Read an IDX file (the format of the MNIST distribution), plain or gzip-compressed.

    Format: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), a byte with the number of dimensions d, d big-endian uint32 sizes, then the data in
    big-endian row-major order.
    """
    import numpy as np

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"path: {path!r} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"path: {path!r} is truncated (header needs {header} bytes, file has {len(raw)})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    np_dtype, torch_dtype = _IDX_DTYPES[raw[2]]
    count = math.prod(shape)
    itemsize = np.dtype(np_dtype).itemsize
    if len(raw) - header != count * itemsize:
        raise ValueError(f"path: {path!r} holds {len(raw) - header} data bytes, expected {count * itemsize} "
                         f"for shape {shape}")
    arr = np.frombuffer(raw, dtype=np_dtype, count=count, offset=header).reshape(shape)
    return torch.from_numpy(arr.astype(np.dtype(np_dtype).newbyteorder("="))).to(torch_dtype)


def _find(root, stem):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = os.path.join(root, name)
        if os.path.isfile(p):
            return p
    return None


def load_mnist(root: str, split: str = "train", *, permuted: bool = False, permutation_seed: int = 0,
               dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Sequential (or permuted-sequential) MNIST from the IDX files in ``root``: T = 784, one pixel a step.

    Looks for ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (``split="train"``) or
    ``t10k-images-idx3-ubyte`` / ``t10k-labels-idx1-ubyte`` (``split="test"``), optionally ``.gz``, also
    spelled ``*.idx3-ubyte``. Nothing is downloaded. Pixels are scaled to [0, 1]; with ``permuted`` they
    are read in the order ``pixel_permutation(784, permutation_seed)``.

    Returns inputs (N, 784, 1) and labels (N,) int64.
    """
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    img_stem, lab_stem = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    img, lab = _find(root, img_stem), _find(root, lab_stem)
    if img is None or lab is None:
        missing = [s for s, p in ((img_stem, img), (lab_stem, lab)) if p is None]
        raise FileNotFoundError(f"root: no MNIST {split} files {missing} (or .gz) in {root!r}; this package "
                                f"never downloads data: put the IDX files there yourself")
    images, labels = read_idx(img), read_idx(lab)
    if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"root: {img!r} has shape {tuple(images.shape)} and {lab!r} {tuple(labels.shape)}; "
                         f"expected (N, rows, cols) images and (N,) labels")
    n_pix = images.shape[1] * images.shape[2]
    x = images.reshape(images.shape[0], n_pix).to(torch.float64) / 255.0
    if permuted:
        x = x[:, pixel_permutation(n_pix, permutation_seed)]
    return x.unsqueeze(-1).to(dtype), labels.to(torch.long)
