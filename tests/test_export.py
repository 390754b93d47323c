"""Exported models: torch.export programs that choose their backend where they run, and ONNX.

* ``torch.export`` records the fused op with the backend the user asked for ("auto" by default), never
  the one this process resolved, so a program exported here runs with the fastest backend of the machine
  that loads it, and still runs where the compiled library is missing.
* ``torch.onnx.export(..., dynamo=True)`` writes the chain as an ONNX Scan (wcrnn_kernels/onnx_export.py):
  checked with onnxruntime against PyTorch at sequence lengths and batch sizes other than the traced
  ones, for every canonical residual form, several layers, both directions, tanh and relu.

The ONNX tests need onnx, onnxscript and onnxruntime (``pip install ".[onnx]"``); they skip without them
unless WCRNN_REQUIRE_ONNX=1 (CI sets it).
"""
from __future__ import annotations

import importlib.util
import io
import os
import warnings

import pytest
import torch

from wcrnn_kernels import FusedWCRNN, backends
from wcrnn_kernels.backends.pytorch import TorchBackend
from wcrnn_kernels.onnx_export import chain_as_scan
from wcrnn_kernels.reference import wcrnn_chain_ref
from wcrnn_kernels.residual import NONLIN_CODES, canonical_residual

ONNX_MISSING = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
REQUIRE_ONNX = os.environ.get("WCRNN_REQUIRE_ONNX") == "1"


def _chain_nodes(ep):
    return [n for n in ep.graph.nodes if n.op == "call_function" and "wcrnn_kernels.chain_fwd" in str(n.target)]


def _export(model, x):
    return torch.export.export(model, (x,))


def test_export_records_the_requested_backend_not_the_resolved_one():
    torch.manual_seed(0)
    model = FusedWCRNN(4, 6, num_layers=2, residual="rotational", gamma=0.3).eval()
    ep = _export(model, torch.randn(5, 2, 4))
    nodes = _chain_nodes(ep)
    assert len(nodes) == 2
    assert all("auto" in n.args for n in nodes), [n.args for n in nodes]
    for name in backends.backend_names():
        if name != "auto":
            assert all(name not in n.args for n in nodes), name
    forced = _export(FusedWCRNN(4, 6, backend="torch").eval(), torch.randn(5, 2, 4))
    assert all("torch" in n.args for n in _chain_nodes(forced))     # a forced backend still wins


def test_export_of_a_model_without_saved_preactivations_records_the_chain_op():
    """torch.export traces the default path of save_preactivations=False (which applies to eager calls and
    torch.compile): the graph holds the chain op, which the ONNX exporter translates, and no lean layer op."""
    torch.manual_seed(0)
    model = FusedWCRNN(4, 6, num_layers=2, bidirectional=True, save_preactivations=False)
    x = torch.randn(5, 2, 4)
    ep = _export(model, x)
    assert len(_chain_nodes(ep)) == 4
    assert not [n for n in ep.graph.nodes if "lean_layer" in str(n.target)]
    torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("save_preactivations", [True, False])
def test_program_exported_under_no_grad_backpropagates_as_nn_rnns(save_preactivations):
    """A program exported under torch.no_grad records the forward that saves no pre-activations (save_a is a
    constant of the graph); run later with grad, its backward recomputes them (one GEMM) instead of refusing, as
    nn.RNN's exported program backpropagates. Every gradient as eager's, in float64, with lengths too."""
    torch.manual_seed(5)
    model = FusedWCRNN(5, 4, num_layers=2, bidirectional=True, batch_first=True, residual="rotational",
                       learn_residual=True, learn_gamma=True, save_preactivations=save_preactivations).double()
    x, h0 = torch.randn(3, 6, 5, dtype=torch.float64), torch.randn(4, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        ep = torch.export.export(model, (x, h0))
    assert not any(n.args[-1] for n in _chain_nodes(ep))  # the forwards that save nothing
    x.requires_grad_(True)
    h0.requires_grad_(True)

    def grads(fn):
        out, h_n = fn(x, h0)
        return torch.autograd.grad(out.square().sum() + h_n.sum(), [x, h0, *model.parameters()])
    names = ["input", "h_0"] + [n for n, _ in model.named_parameters()]
    for n, got, want in zip(names, grads(ep.module()), grads(model)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=lambda m: f"{n}: {m}")


def test_chain_op_backward_without_saved_preactivations_matches_with_them():
    """The chain op with save_a=False under autograd (what such an exported program runs): its backward
    recomputes a from u; the same gradients as with save_a=True, lengths included, and u left as it was."""
    from wcrnn_kernels.ops import _chain_fwd
    torch.manual_seed(6)
    T, B, H = 6, 3, 4
    base = [torch.randn(T, B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64),
            torch.randn(H, H, dtype=torch.float64) * 0.3, torch.rand(2, H, dtype=torch.float64),
            torch.rand(H, dtype=torch.float64)]
    go = torch.randn(T, B, H, dtype=torch.float64)
    for lengths in (None, torch.tensor([6, 2, 4])):
        result = []
        for save_a in (True, False):
            ts = [t.clone().requires_grad_() for t in base]
            u_before = ts[0].detach().clone()
            out, h_n, _ = _chain_fwd(*ts, lengths, 1, 0, "auto", save_a)
            result.append(torch.autograd.grad((out * go).sum() + h_n.sum(), ts))
            assert torch.equal(ts[0].detach(), u_before)
        for g_saved, g_recomputed in zip(*result):
            torch.testing.assert_close(g_recomputed, g_saved, rtol=1e-12, atol=1e-13)


def test_exported_program_runs_where_the_compiled_library_is_missing(monkeypatch):
    """Saved and loaded, the program resolves "auto" when it runs: with only the torch backend left (as on
    a machine without the C++ library) it runs that one, and gives the eager result."""
    torch.manual_seed(1)
    model = FusedWCRNN(4, 6, residual="dense", gamma=0.2, r=0.5).eval()
    x = torch.randn(7, 3, 4)
    buf = io.BytesIO()
    torch.export.save(_export(model, x), buf)
    buf.seek(0)
    loaded = torch.export.load(buf).module()
    with torch.no_grad():
        expected = model(x)
    monkeypatch.setitem(backends._AUTO_ORDER, "cpu", ("torch",))
    monkeypatch.setattr(backends._registry, "_RESOLVED", {})
    calls = []
    orig = TorchBackend.chain_fwd
    monkeypatch.setattr(TorchBackend, "chain_fwd", lambda self, *a: calls.append(1) or orig(self, *a))
    x2 = torch.randn(7, 3, 4)
    with torch.no_grad():
        got = loaded(x2)
        exp2 = model(x2)
    assert calls, "the loaded program did not resolve 'auto' to the torch backend when it ran"
    for g, e in zip(got, exp2):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert not torch.equal(expected[0], got[0])     # a different input: the program is not a constant


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (exported on CPU, run on it)")
def test_program_exported_on_cpu_runs_on_the_gpu():
    torch.manual_seed(2)
    model = FusedWCRNN(4, 8, num_layers=2, residual="scalar", r=0.9, gamma=0.2).eval()
    x = torch.randn(6, 3, 4)
    buf = io.BytesIO()
    torch.export.save(_export(model, x), buf)
    buf.seek(0)
    loaded = torch.export.load(buf).module().to("cuda")
    with torch.no_grad():
        got = loaded(x.cuda())
        expected = model.to("cuda")(x.cuda())
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["diagonal", "rotational", "dense"])
@pytest.mark.parametrize("lengths", [False, True])
def test_scan_chain_equals_the_reference(kind, lengths):
    """The chain the ONNX export traces, run eagerly, is the reference's chain (float64)."""
    torch.manual_seed(3)
    T, B, H = 6, 4, 8
    g = torch.Generator().manual_seed(4)
    r = {"diagonal": torch.rand(H, generator=g), "rotational": 0.9, "dense": torch.randn(H, H, generator=g) / H}[kind]
    theta = torch.rand(H // 2, generator=g) if kind == "rotational" else None
    res_kind, res = canonical_residual(kind, H, r, theta, dtype=torch.float64, device="cpu")
    u = torch.randn(T, B, H, dtype=torch.float64)
    x0 = torch.randn(B, H, dtype=torch.float64)
    w = torch.randn(H, H, dtype=torch.float64) / H ** 0.5
    gamma = torch.rand(H, dtype=torch.float64)
    L = torch.tensor([6, 0, 3, 5]) if lengths else None
    for nonlin in ("tanh", "relu"):
        got = chain_as_scan(u, x0, w, res_kind, res, gamma, L, NONLIN_CODES[nonlin])
        expected = wcrnn_chain_ref(u, x0, w, res_kind, res, gamma, L, nonlin)
        for a, e in zip(got, expected):
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


ONNX_CASES = {
    "scalar-1layer": dict(residual="scalar", r=0.9, gamma=0.1),
    "diagonal-2layers-bidir-relu": dict(residual="diagonal", num_layers=2, bidirectional=True, gamma=0.2,
                                        nonlinearity="relu"),
    "rotational-2layers-bidir": dict(residual="rotational", num_layers=2, bidirectional=True, gamma=0.2),
    "dense-batch-first": dict(residual="dense", r=0.3, gamma=0.3, batch_first=True),
    # the exporters trace the default path (the lean layer op has no ONNX translation)
    "no-saved-preactivations-bidir": dict(num_layers=2, bidirectional=True, gamma=0.2, save_preactivations=False),
}


@pytest.mark.parametrize("case", list(ONNX_CASES))
def test_onnx_export_with_dynamic_length_and_batch(case, tmp_path):
    if ONNX_MISSING:
        msg = f"needs {', '.join(ONNX_MISSING)} (pip install '.[onnx]')"
        if REQUIRE_ONNX:
            pytest.fail(msg + "; WCRNN_REQUIRE_ONNX=1 asks for the ONNX tests")
        pytest.skip(msg)
    import onnxruntime as ort
    kw = ONNX_CASES[case]
    torch.manual_seed(5)
    model = FusedWCRNN(5, 8, **kw).eval()
    bf = kw.get("batch_first", False)
    x = torch.randn((3, 7, 5) if bf else (7, 3, 5))
    h0 = torch.randn(model.num_layers * (2 if model.bidirectional else 1), 3, 8)
    T, B = torch.export.Dim("T", min=2), torch.export.Dim("B", min=2)
    dyn = ({0: B, 1: T} if bf else {0: T, 1: B}, {1: B})
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x, h0), str(path), dynamo=True, dynamic_shapes=dyn,
                      input_names=["input", "h0"], output_names=["output", "h_n"])
    sess = ort.InferenceSession(str(path))
    for t, b in ((7, 3), (13, 4), (2, 2), (40, 5)):
        xx = torch.randn((b, t, 5) if bf else (t, b, 5))
        hh = torch.randn(h0.shape[0], b, 8)
        out, hn = sess.run(None, {"input": xx.numpy(), "h0": hh.numpy()})
        with torch.no_grad():
            e_out, e_hn = model(xx, hh)
        assert out.shape == tuple(e_out.shape) and hn.shape == tuple(e_hn.shape), (t, b)
        torch.testing.assert_close(torch.from_numpy(out), e_out, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(hn), e_hn, rtol=1e-4, atol=1e-5)


def test_legacy_onnx_exporter_is_refused_by_name():
    """torch.onnx.export(..., dynamo=False) traces with TorchScript, where the chain has no ONNX translation:
    a message that says to export with dynamo=True, not torch's internal scan error."""
    model = FusedWCRNN(5, 8).eval()
    with pytest.raises(RuntimeError, match=r"dynamo=False.*Export with dynamo=True"):
        torch.onnx.export(model, (torch.randn(4, 2, 5),), io.BytesIO(), dynamo=False)


@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True, residual="rotational"),
                                dict(residual="none", gamma=1.0, batch_first=True)], ids=["scalar", "bidir", "elman"])
def test_jit_trace_records_the_fused_op(kw):
    """torch.jit.trace (with its default check, which reruns under no_grad) gives a module that equals the
    eager one at other lengths and batch sizes, gradients included."""
    torch.manual_seed(3)
    model = FusedWCRNN(5, 8, **kw)
    traced = torch.jit.trace(model, (torch.randn(4, 2, 5),))
    x = torch.randn(9, 3, 5, requires_grad=True)
    results = []
    for m in (model, traced):
        out, h_n = m(x)
        grads = torch.autograd.grad((out * out).sum() + h_n.sum(), [x] + list(model.parameters()))
        results.append([out, h_n, *grads])
    assert len(results[0]) == len(results[1]) == 3 + len(list(model.parameters()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_jit_trace_of_a_function_as_the_first_use_of_the_compiled_backend(monkeypatch):
    """A function that calls wcrnn_chain, traced before anything in the process looked at the compiled backend:
    its availability check (which calls wcrnn_C::cpu_info, an op returning a string that the tracer cannot
    record) runs outside the trace. It used to fail under it: that trace then failed with "ArrayRef: invalid
    index", and "cpp" stayed marked unavailable for the whole process ("auto" warned of a missing library and
    ran later calls on the torch backend)."""
    from wcrnn_kernels.backends import _registry

    cpp = backends.get_backend("cpp")
    if not cpp.availability()[0]:
        pytest.skip("the cpp backend is not available here")
    monkeypatch.setattr(cpp, "_availability", None)  # as in a fresh process: nothing checked or resolved yet
    monkeypatch.setattr(_registry, "_RESOLVED", {})
    monkeypatch.setattr(_registry, "_FALLBACK_WARNED", set())
    from wcrnn_kernels import wcrnn_chain

    torch.manual_seed(5)
    H = 8

    def f(u, x0, w_hh, res, gamma):
        return wcrnn_chain(u, x0, w_hh, 0, res, gamma)

    args = (torch.randn(5, 2, H), torch.randn(2, H), torch.randn(H, H) / 3, torch.full((H,), 0.9),
            torch.full((H,), 0.2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "auto runs CPU tensors on 'torch'" fallback warning
        traced = torch.jit.trace(f, args)
    assert cpp.availability()[0], cpp.availability()[1]
    assert "wcrnn_kernels::chain_fwd" in traced.graph.str()
    other = (torch.randn(7, 3, H), torch.randn(3, H)) + args[2:]
    for a, b in zip(traced(*other), f(*other)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_jit_script_is_refused_by_name():
    with pytest.raises(RuntimeError, match="FusedWCRNN does not support torch.jit.script.*torch.compile"):
        torch.jit.script(FusedWCRNN(5, 8))
