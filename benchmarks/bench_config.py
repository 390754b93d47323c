"""Benchmark configuration: shapes (docs/design.md section 7) and the device/dtype/shape selection from the
environment (see conftest.py for the variables)."""
from __future__ import annotations

import os

import torch

SHAPES = {  # name: (T, B, I, H), docs/design.md section 7
    "S1": (784, 32, 1, 128),
    "S2": (1024, 16, 32, 64),
    "S3": (1024, 64, 32, 256),
    "S4": (100, 100, 2, 128),
    "G4": (4096, 8, 64, 512),
}

# Step by step (generation, online control): `calls` forward calls of T = 1 under no_grad, each carrying the
# state of the last; what it measures is mostly the host cost of a call. name: (calls, B, I, H)
STEP_SHAPES = {
    "P1": (100, 1, 32, 128),
    "P2": (100, 32, 32, 256),
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


def layer_call(impl: str, mode: str, T: int, B: int, I: int, H: int, device, dtype):
    """The callable one measurement times (shared by this harness and scripts/gpu_bench.py).

    impl "nn.RNN" or a FusedWCRNN backend name: one full layer (input projection + chain, the default
    residual); mode "forward" runs it under no_grad, "forward+backward" backpropagates one upstream gradient
    into output and h_n with the input, weights and biases requiring grad. impl "gemm-floor": the forward
    chain's floor, T dependent (B x H) @ (H x H) products and nothing else (mode ignored).

    float32 precision variants (what a float32 comparison with cuDNN depends on): "nn.RNN-noTF32" runs
    nn.RNN with ``torch.backends.cudnn.allow_tf32 = False`` (its default True lets cuDNN use TF32 tensor
    cores for float32 RNNs); "<backend>@<precision>" runs a backend under
    ``torch.set_float32_matmul_precision(precision)`` ("highest", "high", "medium"), which the Triton kernels
    follow.

    CUDA execution paths: "cuda:<path>" runs the cuda backend with ``WCRNN_CUDA_PATH=<path>`` ("block",
    "grid", "regs"), set around every call.

    Without saved pre-activations: "<backend>+lean" runs FusedWCRNN(backend=<backend>,
    save_preactivations=False) (the backward recomputes the input projection and a_t).

    The chain alone: "<backend>/chain" times the chain as the module's forward calls it (``ops.run_chain``,
    past the public op's checks, with the weights as the module passes them) on the layer's input projection,
    computed once beforehand: the layer's time less this is what the module adds around the chain (the
    projection, h0, h_n, its Python).
    """
    torch.manual_seed(0)
    if ":" in impl:
        base, path = impl.split(":", 1)
        return _with_env(layer_call(base, mode, T, B, I, H, device, dtype), "WCRNN_CUDA_PATH", path)
    if impl == "nn.RNN-noTF32" or "@" in impl:
        base, setting = ("nn.RNN", False) if impl == "nn.RNN-noTF32" else impl.split("@", 1)
        return _with_float32_setting(layer_call(base, mode, T, B, I, H, device, dtype),
                                     "cudnn" if base == "nn.RNN" else "matmul", setting)
    if impl == "gemm-floor":
        x = torch.randn(B, H, device=device, dtype=dtype)
        w = torch.randn(H, H, device=device, dtype=dtype) / H ** 0.5
        y = torch.empty(B, H, device=device, dtype=dtype)

        def floor():
            for _ in range(T):
                torch.mm(x, w, out=y)
        return floor
    if impl.endswith("/chain"):
        return _chain_call(impl[:-len("/chain")], mode, T, B, I, H, device, dtype)
    from wcrnn_kernels import FusedWCRNN
    if impl == "nn.RNN":
        model = torch.nn.RNN(I, H, device=device, dtype=dtype)
    else:
        backend, lean = (impl[:-len("+lean")], True) if impl.endswith("+lean") else (impl, False)
        model = FusedWCRNN(I, H, backend=backend, device=device, dtype=dtype, save_preactivations=not lean)
    x = torch.randn(T, B, I, device=device, dtype=dtype, requires_grad=(mode != "forward"))
    g_out = torch.randn(T, B, H, device=device, dtype=dtype)
    g_h = torch.randn(1, B, H, device=device, dtype=dtype)
    if mode == "forward":
        def forward():
            with torch.no_grad():
                model(x)
        return forward

    def forward_backward():
        out, h = model(x)
        torch.autograd.backward([out, h], [g_out, g_h])
    # its two halves, for a caller that measures what the forward leaves alive for the backward (gpu_bench's
    # memory fields): forward() -> outputs, backward(outputs)
    forward_backward.forward = lambda: model(x)
    forward_backward.backward = lambda outs: torch.autograd.backward(list(outs), [g_out, g_h])
    return forward_backward


def _chain_call(backend, mode, T, B, I, H, device, dtype):
    from wcrnn_kernels import FusedWCRNN
    from wcrnn_kernels.ops import _plain_eager, run_chain
    from wcrnn_kernels.residual import NONLIN_CODES
    model = FusedWCRNN(I, H, backend=backend, device=device, dtype=dtype)
    cw = model._chain_weights(0, 0, True)  # what the module's forward passes the chain (a 0-d r and gamma)
    with torch.no_grad():
        u = torch.nn.functional.linear(torch.randn(T, B, I, device=device, dtype=dtype), cw.w_ih, cw.bias)
    x0 = torch.zeros(B, H, device=device, dtype=dtype)
    res, gamma, w_hh = cw.res.detach(), cw.gamma.detach(), cw.w_hh.detach()
    if mode != "forward":
        u.requires_grad_(True)
        w_hh = w_hh.clone().requires_grad_(True)
    args = (u, x0, w_hh, cw.res_kind, res, gamma, None, NONLIN_CODES[cw.nonlinearity], backend,
            _plain_eager(u, x0, w_hh, res, gamma))
    if mode == "forward":
        def forward():
            with torch.no_grad():
                run_chain(*args)
        return forward
    g_out = torch.randn(T, B, H, device=device, dtype=dtype)

    def forward_backward():
        out, _ = run_chain(*args)
        torch.autograd.backward([out], [g_out])
    return forward_backward


def step_call(impl: str, calls: int, B: int, I: int, H: int, device, dtype):
    """The callable for a STEP_SHAPES measurement: impl "nn.RNN" or a FusedWCRNN backend name; `calls`
    single-step forward calls under no_grad, the state of each fed to the next."""
    torch.manual_seed(0)
    from wcrnn_kernels import FusedWCRNN
    if impl == "nn.RNN":
        model = torch.nn.RNN(I, H, device=device, dtype=dtype)
    else:
        model = FusedWCRNN(I, H, backend=impl, device=device, dtype=dtype)
    xs = torch.randn(calls, 1, B, I, device=device, dtype=dtype)
    h0 = torch.zeros(1, B, H, device=device, dtype=dtype)

    def steps():
        with torch.no_grad():
            h = h0
            for x in xs:
                _, h = model(x, h)
    return steps


def _with_setting(fn, get, put, value):
    """fn run with a setting (read by get(), written by put(v)) set to value, restored after every call."""
    def call():
        old = get()
        put(value)
        try:
            fn()
        finally:
            put(old)
    return call


def _put_env(name):
    def put(v):
        if v is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = v
    return put


def _with_env(fn, name, value):
    """fn run with the environment variable `name` set to value."""
    return _with_setting(fn, lambda: os.environ.get(name), _put_env(name), value)


def _with_float32_setting(fn, which, value):
    """fn run with cudnn.allow_tf32 (which "cudnn") or the float32 matmul precision ("matmul") set to value."""
    if which == "cudnn":
        return _with_setting(fn, lambda: torch.backends.cudnn.allow_tf32,
                             lambda v: setattr(torch.backends.cudnn, "allow_tf32", v), value)
    return _with_setting(fn, torch.get_float32_matmul_precision, torch.set_float32_matmul_precision, value)
