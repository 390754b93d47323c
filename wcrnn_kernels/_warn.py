"""Warnings that point at the user's line, from however deep in this package (or in torch) they are raised."""
from __future__ import annotations

import os
import sys
import warnings

import torch

_SKIP = (os.path.dirname(os.path.abspath(__file__)) + os.sep, os.path.dirname(os.path.abspath(torch.__file__)) + os.sep)


def warn_at_caller(message: str, category: type = UserWarning) -> None:
    """warnings.warn with the stack level of the first frame outside wcrnn_kernels and torch: the user's call,
    whether it reached the package through a FusedWCRNN module (nn.Module.__call__ in between), through
    wcrnn_chain, or through a torch.func transform."""
    frame, level = sys._getframe(0), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_SKIP):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
