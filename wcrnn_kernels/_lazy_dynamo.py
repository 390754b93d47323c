"""torch.compile markers that do not import torch._dynamo when the package is imported.

``torch._dynamo`` costs about 0.9 s and 140 MB to import (torch 2.13, CPU). Its decorators, applied at import
time, made every ``import wcrnn_kernels`` pay that, every spawned DataLoader worker included, whether or not
anything is compiled. A program that compiles imports torch._dynamo itself (``torch.compile`` does), and these
markers then act exactly as torch's own; until then nothing can be tracing and they do nothing.
tests/test_compile.py checks both against torch's decorators.
"""
from __future__ import annotations

import functools
import sys

import torch


def assume_constant_result(fn):
    """``torch._dynamo.assume_constant_result`` without the import: Dynamo recognises such a function by this
    attribute (torch 2.1-2.13), calls it at trace time and bakes the result into the graph."""
    fn._dynamo_marked_constant = True
    return fn


def compiler_disable(reason: str):
    """``torch.compiler.disable(fn, reason=reason)``, made on the first call after torch._dynamo is imported.

    Dynamo refuses to trace into a function by its ``_torchdynamo_disable`` attribute and names
    ``_torchdynamo_disable_msg`` as the reason (a graph break; with fullgraph=True the error): the wrapper
    carries both, so a trace never enters it. Run eagerly, it calls ``fn`` directly while torch._dynamo is not
    loaded (nothing can be compiling) and otherwise through torch's own disable, which keeps Dynamo out of
    ``fn`` and everything it calls."""
    def wrap(fn):
        disabled = []

        @functools.wraps(fn)
        def call(*args, **kwargs):
            if "torch._dynamo" not in sys.modules:
                return fn(*args, **kwargs)
            if not disabled:
                try:
                    disabled.append(torch.compiler.disable(fn, reason=reason))
                except TypeError:  # a torch before `reason`
                    disabled.append(torch.compiler.disable(fn))
            return disabled[0](*args, **kwargs)

        call._torchdynamo_disable = True
        call._torchdynamo_disable_msg = reason
        return call
    return wrap
