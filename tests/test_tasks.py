"""Memory tasks (wcrnn_kernels.tasks): layouts, targets recomputed from the inputs, determinism, real
digits, and the IDX reader on small files this test writes (plain and gzip, several dtypes)."""
from __future__ import annotations

import gzip
import importlib.util
import math
import struct

import numpy as np
import pytest
import torch

from wcrnn_kernels import tasks


# ------------------------------------------------------------------------------------------ adding

@pytest.mark.parametrize("T", [2, 7, 100])
def test_adding_problem_layout_and_targets(T):
    g = torch.Generator().manual_seed(T)
    x, y = tasks.adding_problem(500, T, generator=g, dtype=torch.float64)
    assert x.shape == (500, T, 2) and y.shape == (500, 1) and x.dtype == torch.float64
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values <= 1)).all()
    assert set(markers.unique().tolist()) <= {0.0, 1.0} and (markers.sum(1) == 2).all()
    half = T // 2
    assert (markers[:, :half].sum(1) == 1).all() and (markers[:, half:].sum(1) == 1).all()
    assert torch.allclose(y[:, 0], (values * markers).sum(1), rtol=0, atol=1e-15)
    x2, y2 = tasks.adding_problem(500, T, generator=torch.Generator().manual_seed(T), dtype=torch.float64)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_adding_marker_positions_cover_each_half():
    x, _ = tasks.adding_problem(4000, 10, generator=torch.Generator().manual_seed(0))
    pos = x[..., 1].nonzero()[:, 1]
    counts = torch.bincount(pos, minlength=10)
    assert (counts > 0).all()  # every position of both halves is used
    assert abs(counts[:5].sum().item() - 4000) == 0 and abs(counts[5:].sum().item() - 4000) == 0


def test_adding_baseline_and_rms():
    _, y = tasks.adding_problem(200000, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert tasks.adding_baseline_rms() == pytest.approx(math.sqrt(1 / 6))
    assert abs(tasks.rms_error(torch.ones_like(y), y) - tasks.adding_baseline_rms()) < 3e-3
    assert tasks.rms_error(y, y) == 0.0
    assert tasks.rms_error(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])) == pytest.approx(math.sqrt(5))
    assert tasks.ADDING_THRESHOLD_RMS == 0.05
    with pytest.raises(ValueError, match="prediction"):
        tasks.rms_error(torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="seq_len"):
        tasks.adding_problem(3, 1)
    with pytest.raises(ValueError, match="num_samples"):
        tasks.adding_problem(0, 10)


# -------------------------------------------------------------------------------------------- copy

def test_copy_task_layout():
    K, L, delay = 5, 3, 11
    x, y = tasks.copy_task(64, delay, num_symbols=K, copy_len=L, generator=torch.Generator().manual_seed(0))
    T = delay + 2 * L
    assert x.shape == (64, T, K + 2) and y.shape == (64, T) and y.dtype == torch.long
    assert torch.equal(x.sum(-1), torch.ones(64, T))  # one-hot
    seq = x.argmax(-1)
    symbols = seq[:, :L]
    assert ((symbols >= 1) & (symbols <= K)).all()
    assert (seq[:, L:L + delay - 1] == 0).all()
    assert (seq[:, L + delay - 1] == K + 1).all()
    assert (seq[:, L + delay:] == 0).all()
    assert (y[:, :T - L] == 0).all() and torch.equal(y[:, T - L:], symbols)
    assert tasks.copy_baseline_loss(delay, K, L) == pytest.approx(L * math.log(K) / T)
    # delay 1: the delimiter directly follows the symbols
    x1, _ = tasks.copy_task(2, 1, num_symbols=K, copy_len=L)
    assert (x1.argmax(-1)[:, L] == K + 1).all()


# ------------------------------------------------------------------------------------------ digits

NEEDS_SKLEARN = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                   reason="the digits come from scikit-learn (pip install scikit-learn)")


@NEEDS_SKLEARN
def test_sequential_digits_real_data_and_split():
    (xtr, ytr), (xte, yte) = tasks.sequential_digits(test_fraction=0.25, seed=3)
    assert xtr.shape[1:] == (64, 1) and xte.shape[1:] == (64, 1)
    assert xtr.shape[0] + xte.shape[0] == 1797 and xtr.shape[0] == ytr.shape[0]
    assert abs(xte.shape[0] - 0.25 * 1797) <= 10
    assert xtr.min() == 0.0 and xtr.max() == 1.0
    # stratified: every class in both splits, in proportion
    for y, n in ((ytr, xtr.shape[0]), (yte, xte.shape[0])):
        frac = torch.bincount(y, minlength=10).double() / n
        assert (frac > 0.08).all() and (frac < 0.12).all()
    # the pixels are the sklearn images in row-major order
    from sklearn.datasets import load_digits
    d = load_digits()
    imgs = torch.as_tensor(d.images, dtype=torch.float32) / 16.0
    allx = torch.cat((xtr, xte))[..., 0]
    ally = torch.cat((ytr, yte))
    match = {tuple(r.tolist()): int(c) for r, c in zip(imgs.reshape(-1, 64), d.target)}
    for i in range(0, allx.shape[0], 97):
        assert match[tuple(allx[i].tolist())] == ally[i]
    # disjoint and deterministic
    (xtr2, _), _ = tasks.sequential_digits(test_fraction=0.25, seed=3)
    assert torch.equal(xtr, xtr2)
    (xtr3, _), _ = tasks.sequential_digits(test_fraction=0.25, seed=4)
    assert not torch.equal(xtr, xtr3)


@NEEDS_SKLEARN
def test_permuted_digits_apply_one_fixed_permutation():
    (x, y), (xt, yt) = tasks.sequential_digits(seed=1)
    (xp, yp), (xpt, ypt) = tasks.sequential_digits(permuted=True, seed=1, permutation_seed=5)
    perm = tasks.pixel_permutation(64, 5)
    assert sorted(perm.tolist()) == list(range(64)) and not torch.equal(perm, torch.arange(64))
    assert torch.equal(xp, x[:, perm]) and torch.equal(xpt, xt[:, perm]) and torch.equal(yp, y)
    assert torch.equal(perm, tasks.pixel_permutation(64, 5))
    with pytest.raises(ValueError, match="test_fraction"):
        tasks.sequential_digits(test_fraction=1.0)


# -------------------------------------------------------------------------------------------- IDX

def _write_idx(path, arr, type_byte, compress=False):
    dt = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_byte]
    data = bytes([0, 0, type_byte, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + \
        arr.astype(dt).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


@pytest.mark.parametrize("type_byte,compress", [(0x08, False), (0x09, True), (0x0B, False), (0x0C, True),
                                                (0x0D, False), (0x0E, True)])
def test_read_idx_dtypes(tmp_path, type_byte, compress):
    rng = np.random.default_rng(type_byte)
    arr = rng.integers(-100 if type_byte != 0x08 else 0, 100, size=(3, 4, 5))
    if type_byte in (0x0D, 0x0E):
        arr = rng.standard_normal((3, 4, 5))
    p = tmp_path / ("x.idx" + (".gz" if compress else ""))
    _write_idx(p, arr, type_byte, compress)
    t = tasks.read_idx(str(p))
    assert t.shape == (3, 4, 5)
    want = arr.astype({0x0D: np.float32}.get(type_byte, arr.dtype))
    assert np.array_equal(t.numpy().astype(want.dtype), want)


def test_read_idx_rejects_bad_files(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an IDX"):
        tasks.read_idx(str(p))
    _write_idx(p, np.arange(6).reshape(2, 3), 0x08)
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(ValueError, match="data bytes"):
        tasks.read_idx(str(p))


def test_load_mnist_tiny_files(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs, 0x08, compress=True)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, 0x08)
    x, y = tasks.load_mnist(str(tmp_path), "test")
    assert x.shape == (7, 784, 1) and y.dtype == torch.long
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    assert torch.allclose(x[..., 0], torch.from_numpy(imgs.reshape(7, 784) / 255.0).float(), rtol=0, atol=0)
    xp, _ = tasks.load_mnist(str(tmp_path), "test", permuted=True, permutation_seed=2)
    assert torch.equal(xp, x[:, tasks.pixel_permutation(784, 2)])
    with pytest.raises(FileNotFoundError, match="never downloads"):
        tasks.load_mnist(str(tmp_path), "train")
    with pytest.raises(ValueError, match="split"):
        tasks.load_mnist(str(tmp_path), "val")
