"""Comparison helpers and backend lists shared by the test files (import them from here, not from conftest:
conftest modules of tests/ and benchmarks/ share one module name when both are collected)."""
from __future__ import annotations

import pytest
import torch

from wcrnn_kernels import canonical_residual, wcrnn_chain

from wcrnn_kernels import available_backends

# Backends checked against the reference by the generic suites; each is skipped (with its reason) where it
# cannot run in this process.
CHAIN_BACKENDS = ("torch", "cpp", "triton", "cuda")


def backend_param(name: str):
    return pytest.param(name, id=name)


def require_backend(name: str, device: str = "cpu", dtype=torch.float64, hidden_size: int = 8):
    """Skip, with the backend's own reason, when `name` cannot run tensors of this kind here."""
    from wcrnn_kernels.backends import get_backend
    report = available_backends()
    if name not in report:
        pytest.skip(f"backend {name!r} is not part of this build (no wcrnn_kernels.backends module for it)")
    info = report[name]
    if not info["available"]:
        pytest.skip(f"backend {name!r} unavailable here: {info['reason']}")
    why = get_backend(name).supports(torch.device(device), dtype, hidden_size)
    if why is not None:
        pytest.skip(f"backend {name!r} cannot run {device} {dtype} tensors here: {why}")


def max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max(max |expected|, tiny): one number per tensor."""
    actual, expected = actual.detach(), expected.detach()
    scale = expected.abs().max().clamp_min(1e-30) if expected.numel() else torch.tensor(1.0)
    return float((actual.to(expected.dtype) - expected).abs().max() / scale) if expected.numel() else 0.0


def assert_all_close(actual, expected, rtol, names=None):
    """Each pair agrees to `rtol` relative to the expected tensor's max magnitude; NaN never passes."""
    assert len(actual) == len(expected)
    names = names or [str(i) for i in range(len(expected))]
    for n, a, e in zip(names, actual, expected):
        assert a is not None and e is not None, f"{n}: missing gradient"
        assert a.shape == e.shape, f"{n}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        assert torch.isfinite(a).all(), f"{n}: non-finite values"
        err = max_rel_err(a, e)
        assert err <= rtol, f"{n}: relative error {err:.3e} > {rtol:.1e}"


# One chain case and one forward+backward with a shared upstream gradient, used by the backend suites.
KINDS = ("none", "scalar", "diagonal", "rotational", "dense")


def make_case(kind, T, B, H, dtype=torch.float64, lengths=False, seed=0):
    """Random inputs for one chain: u, x0, w_hh, (res_kind, res), gamma, lengths."""
    if kind == "rotational" and H % 2:
        H += 1
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    r = {"none": 0.0, "scalar": 0.97, "diagonal": 0.8 + 0.25 * torch.rand(H, generator=g, dtype=torch.float64),
         "rotational": 0.9 + 0.15 * torch.rand(H // 2, generator=g, dtype=torch.float64),
         "dense": rnd(H, H, scale=0.9 / H ** 0.5).double()}[kind]
    theta = torch.rand(H // 2, generator=g, dtype=torch.float64) * 3.0 if kind == "rotational" else None
    res_kind, res = canonical_residual(kind, H, r, theta, dtype=dtype)
    case = dict(
        u=rnd(T, B, H), x0=rnd(B, H, scale=0.5), w_hh=rnd(H, H, scale=1.0 / H ** 0.5), res_kind=res_kind,
        res=res.detach().clone(), gamma=(0.3 + 0.5 * torch.rand(H, generator=g, dtype=torch.float64)).to(dtype),
        lengths=None)
    if lengths:
        L = torch.randint(0, T + 1, (B,), generator=g)
        L[0] = T  # one full-length row, and (for B > 1) one empty row
        if B > 1:
            L[1] = 0
        case["lengths"] = L
    return case


DIFF = ("u", "x0", "w_hh", "res", "gamma")


def run_chain(case, backend, nonlinearity, upstream_seed=1):
    """Forward, then backward of <output, G_out> + <h_n, G_h>; returns (output, h_n, *grads)."""
    inputs = {k: (v.detach().clone().requires_grad_(True) if k in DIFF else v) for k, v in case.items()}
    out, h_n = wcrnn_chain(inputs["u"], inputs["x0"], inputs["w_hh"], inputs["res_kind"], inputs["res"],
                           inputs["gamma"], inputs["lengths"], nonlinearity, backend)
    g = torch.Generator().manual_seed(upstream_seed)
    g_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
    g_h = torch.randn(h_n.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
    grads = torch.autograd.grad((out * g_out).sum() + (h_n * g_h).sum(), [inputs[k] for k in DIFF])
    return (out, h_n) + tuple(grads)


NAMES = ("output", "h_n") + tuple("d" + k for k in DIFF)


def check_saved_preactivations(be, c, nonlin=0):
    """The backend contract for the saved pre-activations (backends/__init__.py), on one float64 case:
    chain_fwd(save_a=True) returns a_t = u_t + W_hh x_{t-1}, zero past each length, and the same output
    and h_n as save_a=False, which returns an empty a; chain_bwd only reads a and returns a fresh g."""
    from wcrnn_kernels import wcrnn_chain_ref
    T, B, H = c["u"].shape
    gamma = c["gamma"].reshape(-1).expand(H).contiguous()
    args = (c["u"], c["x0"], c["w_hh"], c["res_kind"], c["res"], gamma, c["lengths"], nonlin)
    out, h_n, a = be.chain_fwd(*args, True)
    out2, h_n2, a2 = be.chain_fwd(*args, False)
    assert a2.numel() == 0, "save_a=False must store nothing"
    assert torch.equal(out, out2) and torch.equal(h_n, h_n2), "save_a changed the forward's results"
    ref, _ = wcrnn_chain_ref(c["u"], c["x0"], c["w_hh"], c["res_kind"], c["res"], gamma, c["lengths"],
                             ("tanh", "relu")[nonlin])
    expect = c["u"] + torch.cat([c["x0"][None], ref[:-1]]) @ c["w_hh"].t()
    if c["lengths"] is not None:
        expect = torch.where((torch.arange(T)[:, None] < c["lengths"][None, :])[..., None], expect, 0.0)
    assert a.shape == (T, B, H) and a.dtype == c["u"].dtype
    assert_all_close([a], [expect], rtol=1e-12, names=["a"])
    a_before = a.clone()
    g, _, _ = be.chain_bwd(torch.randn_like(out), torch.randn_like(h_n), a, c["w_hh"], c["res_kind"], c["res"],
                           gamma, c["lengths"], nonlin, True)
    assert torch.equal(a, a_before), "chain_bwd wrote into a"
    assert g.data_ptr() != a.data_ptr() and g.shape == a.shape and torch.isfinite(g).all()
