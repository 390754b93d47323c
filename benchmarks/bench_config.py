"""Benchmark configuration: shapes (DESIGN.md section 7) and the device/dtype/shape selection from the
environment (see conftest.py for the variables)."""
from __future__ import annotations

import os

import torch

SHAPES = {  # name: (T, B, I, H), DESIGN.md section 7
    "S1": (784, 32, 1, 128),
    "S2": (1024, 16, 32, 64),
    "S3": (1024, 64, 32, 256),
    "S4": (100, 100, 2, 128),
    "G4": (4096, 8, 64, 512),
}


def bench_device() -> str:
    return os.environ.get("WCRNN_BENCH_DEVICE", "cpu")


def bench_dtype() -> torch.dtype:
    return getattr(torch, os.environ.get("WCRNN_BENCH_DTYPE", "float32"))


def bench_shapes() -> list[str]:
    env = os.environ.get("WCRNN_BENCH_SHAPES")
    if env:
        return [s.strip() for s in env.split(",") if s.strip()]
    return ["S1", "S2", "S3", "S4"] + (["G4"] if bench_device() == "cuda" else [])


