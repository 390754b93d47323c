"""Fixtures shared by the test suite (importable helpers live in helpers.py)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def poison_empty(monkeypatch):
    """Fill every uninitialised float tensor allocated from Python with NaN.

    A kernel or launcher that forgets to write part of an output then yields NaN instead of whatever the
    allocator happened to hold, and the comparison fails loudly.
    """
    def poisoned(fn):
        def wrapper(*args, **kwargs):
            t = fn(*args, **kwargs)
            if t.is_floating_point() or t.is_complex():
                t.fill_(float("nan"))
            return t
        return wrapper

    monkeypatch.setattr(torch, "empty", poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", poisoned(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", poisoned(torch.Tensor.new_empty))
    yield
