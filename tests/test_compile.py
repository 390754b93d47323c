"""torch.compile(fullgraph=True) runs a model that uses FusedWCRNN, forward and backward, as eager does."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

from wcrnn_kernels import FusedWCRNN


class Classifier(torch.nn.Module):
    def __init__(self, backend, residual):
        super().__init__()
        self.rnn = FusedWCRNN(3, 8, num_layers=2, bidirectional=True, residual=residual, r=0.98, gamma=0.3,
                              learn_residual=True, learn_gamma=True, backend=backend, batch_first=True)
        self.head = torch.nn.Linear(16, 2)

    def forward(self, x):
        out, h_n = self.rnn(x)
        return self.head(out[:, -1]) + h_n.sum(0).sum(-1, keepdim=True)


@pytest.mark.parametrize("residual", ["scalar", "rotational", "dense"])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_compile_fullgraph_matches_eager(backend, residual):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Classifier(backend, residual)
    x = torch.randn(4, 9, 3)
    eager_out = model(x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compiled(x)
    # nothing of ours makes Dynamo warn (it did of a functools.lru_cache in the module's per-call path)
    ours = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert not ours, ours
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
    for (n, _), g, e in zip(model.named_parameters(), grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("save_preactivations", [True, False])
def test_compile_inductor_fullgraph(save_preactivations):
    """The default inductor backend too (it generates C++ for the rest of the graph on CPU); also with
    save_preactivations=False (the lean layer op)."""
    torch._dynamo.reset()
    torch.manual_seed(1)
    model = Classifier("auto", "diagonal")
    model.rnn.save_preactivations = save_preactivations
    x = torch.randn(2, 5, 3)
    eager_out = model(x)
    eager_grads = torch.autograd.grad(eager_out.sum(), list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    grads = torch.autograd.grad(out.sum(), list(model.parameters()))
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_opcheck_on_the_custom_ops():
    """torch.library.opcheck: schema, fake tensor, autograd registration and AOT dispatch are consistent."""
    from wcrnn_kernels.ops import _chain_fwd
    torch.manual_seed(2)
    T, B, H = 4, 3, 6
    args = (torch.randn(T, B, H, requires_grad=True), torch.randn(B, H, requires_grad=True),
            torch.randn(H, H, requires_grad=True), torch.rand(2, H, requires_grad=True),
            torch.rand(H, requires_grad=True), torch.tensor([4, 1, 2]), 1, 0, "torch", True)
    torch.library.opcheck(_chain_fwd, args)
    torch.library.opcheck(_chain_fwd, args[:5] + (None, 1, 1, "torch", True))  # no lengths, relu
    nograd = tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in args)
    torch.library.opcheck(_chain_fwd, nograd[:-1] + (False,))  # inference: nothing saved


def test_compiled_lean_layer_under_autocast_keeps_the_chain_in_float32():
    """save_preactivations=False compiled under CPU bfloat16 autocast: every gradient equal to the eager lean
    layer's, whose chain backward runs in float32. (Found by a client test: the backward's implementation, traced
    by AOT autograd under the forward's autocast state, formed W_hh's gradient in bfloat16, 1e-3 off.)"""
    torch._dynamo.reset()
    torch.manual_seed(0)
    base = FusedWCRNN(6, 32, residual="none", gamma=1.0, save_preactivations=False)
    x = torch.randn(20, 5, 6)

    def grads(m, fn):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, h = fn(x)
        return torch.autograd.grad(out.float().square().sum() + h.float().sum(), list(m.parameters()))

    eager = grads(base, base)
    twin = copy.deepcopy(base)
    compiled = grads(twin, torch.compile(twin, backend="aot_eager", fullgraph=True))
    for name, c, e in zip([n for n, _ in base.named_parameters()], compiled, eager):
        torch.testing.assert_close(c, e, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("save_preactivations", [True, False])
@pytest.mark.parametrize("width", [3, 16])
def test_compile_inductor_input_and_state_gradients(save_preactivations, width):
    """Inductor checks every custom op's output strides against its fake kernel's (assert_size_stride): the
    gradients of a batch_first input (a transposed view inside the module), of a non-contiguous h_0, and of W_ih
    at a narrow input width (formed as a transposed product on the CPU) must come out as the fakes say. (CI's
    cold compile met the last one: the fake followed w_ih's strides, the kernel returned a transposed tensor.)"""
    torch._dynamo.reset()
    torch.manual_seed(2)
    rnn = FusedWCRNN(width, 8, num_layers=2, bidirectional=True, residual="rotational", gamma=0.3, batch_first=True,
                     learn_residual=True, learn_gamma=True, save_preactivations=save_preactivations).double()
    # float64: the compiled graph sums in other orders than eager, which in float32 moves a small gradient entry
    # by 4e-5 relative; in float64 the same difference is ~1e-14, and a real error stands out at any tolerance
    x = torch.randn(3, 6, width, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 4, 8, dtype=torch.float64).transpose(0, 1).requires_grad_()  # (L x D, B, H), not contiguous

    def loss(fn):
        out, h_n = fn(x, h0)
        return torch.autograd.grad(out.square().sum() + h_n.sum(), [x, h0, *rnn.parameters()])
    eager = loss(rnn)
    compiled = loss(torch.compile(rnn, fullgraph=True))
    names = ["input", "h_0"] + [n for n, _ in rnn.named_parameters()]
    for n, c, e in zip(names, compiled, eager):
        torch.testing.assert_close(c, e, rtol=1e-10, atol=1e-12, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("kind", [0, 1, 2])
def test_custom_op_outputs_are_contiguous_as_their_fakes_say(backend, kind):
    """The package's ops on a transposed x0 / grad_hn (legal for a direct caller; the module passes contiguous
    ones): every output contiguous, as the fakes say. The torch backend's h_n and dx0 kept x0's / grad_hn's layout
    (elementwise ops keep it), the lean op's fake followed x0's."""
    from wcrnn_kernels.module import _lean_fwd
    from wcrnn_kernels.ops import _chain_bwd, _chain_fwd
    torch.manual_seed(4)
    T, B, H, I = 5, 3, 4, 3
    res = (torch.rand(H), torch.rand(2, H), torch.randn(H, H) * 0.3)[kind]
    w, gamma, x0_t = torch.randn(H, H) * 0.3, torch.rand(H), torch.randn(H, B).t()
    checks = ("test_schema", "test_faketensor")
    for lengths in (None, torch.tensor([5, 2, 4])):
        torch.library.opcheck(_chain_fwd, (torch.randn(T, B, H), x0_t, w, res, gamma, lengths, kind, 0, backend,
                                           True), test_utils=checks)
        out, _, a = _chain_fwd(torch.randn(T, B, H), x0_t.contiguous(), w, res, gamma, lengths, kind, 0, backend,
                               True)
        torch.library.opcheck(_chain_bwd, (torch.randn(T, B, H), torch.randn(H, B).t(), a, x0_t, out, w, res, gamma,
                                           lengths, kind, 0, backend, True, True, True), test_utils=checks)
        torch.library.opcheck(_lean_fwd, (torch.randn(T, B, I), torch.randn(H, I), None, x0_t, w, res, gamma, lengths,
                                          I, kind, 0, backend, None, False), test_utils=checks)


@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
@pytest.mark.parametrize("save_preactivations", [True, False])
def test_compiled_bias_gradients_are_separate_tensors_and_accumulate(backend, save_preactivations):
    """From a client test: compiled, bias_ih's and bias_hh's .grad were one tensor (a compiled backward of
    b_ih + b_hh returns one tensor for both), so a second backward without zero_grad counted each bias gradient
    3x and clip_grad_norm_ scaled them twice. Now: separate tensors, two backwards give twice one backward's
    gradients for every parameter, and clipping matches eager."""
    torch._dynamo.reset()
    torch.manual_seed(7)
    base = FusedWCRNN(3, 8, num_layers=2, bidirectional=True, residual="diagonal", learn_residual=True,
                      save_preactivations=save_preactivations).double()
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    eager = copy.deepcopy(base)
    eager(x)[0].square().sum().backward()
    once = {n: p.grad.clone() for n, p in eager.named_parameters()}
    compiled = torch.compile(base, backend=backend, fullgraph=True)
    for _ in range(2):
        compiled(x)[0].square().sum().backward()
    for layer in range(2):
        for sfx in ("", "_reverse"):
            b_ih, b_hh = getattr(base, f"bias_ih_l{layer}{sfx}"), getattr(base, f"bias_hh_l{layer}{sfx}")
            assert b_ih.grad.data_ptr() != b_hh.grad.data_ptr()
    for n, p in base.named_parameters():
        torch.testing.assert_close(p.grad, 2 * once[n], rtol=1e-10, atol=1e-12, msg=lambda m: f"{n}: {m}")
    eager(x)[0].square().sum().backward()  # eager's gradients now two backwards' too
    torch.nn.utils.clip_grad_norm_(base.parameters(), 0.25)
    torch.nn.utils.clip_grad_norm_(eager.parameters(), 0.25)
    for (n, p), q in zip(base.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("reverse", [False, True])
def test_opcheck_on_the_lean_layer_op(reverse):
    """The same for save_preactivations=False's op (input projection and chain, recomputed in the backward): with
    lengths and a rotational residual, the second direction's reversal, no bias, bfloat16 autocast."""
    from wcrnn_kernels.module import _lean_fwd
    torch.manual_seed(3)
    T, B, I, H = 4, 3, 5, 6

    def r(*shape):
        return torch.randn(*shape, requires_grad=True)
    args = (r(T, B, I), r(H, I), r(H), r(B, H), r(H, H), torch.rand(2, H, requires_grad=True),
            torch.rand(H, requires_grad=True), torch.tensor([4, 1, 2]), I, 1, 0, "torch", None, reverse)
    torch.library.opcheck(_lean_fwd, args)
    torch.library.opcheck(_lean_fwd, args[:2] + (None,) + args[3:7] + (None, I, 1, 1, "cpp", None, reverse))
    torch.library.opcheck(_lean_fwd, args[:12] + (torch.bfloat16, reverse))
    # the backward op itself: its outputs against its fake (inductor asserts their strides), at a narrow width
    # (I = 5: the CPU's transposed weight-gradient product) and a wide one, with a transposed input (batch_first)
    from wcrnn_kernels.module import _lean_bwd
    for width, inp in ((I, torch.randn(B, T, I).transpose(0, 1)), (16, torch.randn(T, B, 16))):
        w_ih = torch.randn(H, width)
        fwd = tuple(t.detach() if isinstance(t, torch.Tensor) else t
                    for t in (inp, w_ih) + args[2:8] + (width, 1, 0, "cpp", None, reverse))
        out, h_n = _lean_fwd(*fwd)  # fwd: inp w_ih bias x0 w_hh res gamma lengths, then the 6 non-tensors
        bwd = (torch.randn_like(out), torch.randn_like(h_n)) + fwd[:4] + (out,) + fwd[4:] + ([True] * 7,)
        torch.library.opcheck(_lean_bwd, bwd, test_utils=("test_schema", "test_faketensor"))


# ------------------------------------------------------------------------------------ the eager fast path

class _Counting:
    """Wraps ops._chain_fwd / _chain_bwd (the custom ops) and counts the calls that go through them."""
    def __init__(self, op):
        self.op, self.calls = op, 0

    def __call__(self, *args):
        self.calls += 1
        return self.op(*args)


def _run(case, backend, **kw):
    from wcrnn_kernels import wcrnn_chain
    leaves = {k: case[k].clone().requires_grad_() for k in ("u", "x0", "w_hh", "res", "gamma")}
    out, h_n = wcrnn_chain(leaves["u"], leaves["x0"], leaves["w_hh"], case["res_kind"], leaves["res"],
                           leaves["gamma"], case["lengths"], backend=backend, **kw)
    torch.manual_seed(5)
    (out * torch.randn_like(out)).sum().add((h_n * torch.randn_like(h_n)).sum()).backward()
    return [out.detach(), h_n.detach()] + [leaves[k].grad for k in ("u", "x0", "w_hh", "res", "gamma")]


@pytest.mark.parametrize("kind", ["scalar", "rotational", "dense"])
@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_eager_fast_path_is_the_op_bit_for_bit(monkeypatch, backend, kind):
    """Plain eager calls skip the custom-op dispatch (its host cost) but run the same implementation and
    backward formula: outputs and every gradient are bitwise those of the op path, which a TorchDispatchMode
    forces; the counters show which path ran."""
    from helpers import make_case, require_backend
    from torch.utils._python_dispatch import TorchDispatchMode
    from wcrnn_kernels import ops
    require_backend(backend, dtype=torch.float64)
    case = make_case(kind, 7, 3, 6, lengths=True, seed=4)
    fwd, bwd = _Counting(ops._chain_fwd), _Counting(ops._chain_bwd)
    monkeypatch.setattr(ops, "_chain_fwd", fwd)
    monkeypatch.setattr(ops, "_chain_bwd", bwd)

    fast = _run(case, backend)
    assert (fwd.calls, bwd.calls) == (0, 0), "a plain eager call took the custom-op path"

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Passthrough():
        slow = _run(case, backend)
    assert (fwd.calls, bwd.calls) == (1, 1), "under a dispatch mode the call must go through the custom ops"
    for name, a, b in zip(("out", "h_n", "u", "x0", "w_hh", "res", "gamma"), fast, slow):
        assert torch.equal(a, b), name


def test_eager_fast_path_only_for_plain_eager_calls():
    from wcrnn_kernels.ops import _plain_eager
    t, p = torch.zeros(2), torch.nn.Parameter(torch.zeros(2))
    assert _plain_eager(t, p, None)

    class Sub(torch.Tensor):
        pass
    assert not _plain_eager(t, t.as_subclass(Sub))
    seen = []
    torch.func.vmap(lambda x: seen.append(_plain_eager(x)) or x)(torch.zeros(3, 2))
    assert seen == [False]
    from torch.overrides import TorchFunctionMode

    class Passthrough(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))
    with Passthrough():
        assert not _plain_eager(t)
    with torch.device("cpu"):  # the one mode that changes nothing here: the default device of factories
        assert _plain_eager(t)
        with Passthrough():
            assert not _plain_eager(t)


def test_eager_function_binds_no_signature_per_call(monkeypatch):
    """The eager path's autograd.Function sets up its context in forward: with a setup_context, Function.apply
    binds every call's arguments through inspect.signature (a quarter of a T = 1 training step's host time,
    README). Counted, not timed; the positive control is a Function that defines setup_context."""
    import inspect
    from wcrnn_kernels import ops
    calls = []
    real = inspect.signature
    monkeypatch.setattr(inspect, "signature", lambda *a, **k: calls.append(a) or real(*a, **k))

    class WithSetupContext(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return x * 2

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g):
            return g * 2
    x = torch.zeros(2, requires_grad=True)
    WithSetupContext.apply(x)
    assert calls, "positive control: a Function with setup_context binds through inspect.signature"
    calls.clear()
    H = 4
    args = (torch.randn(3, 2, H, requires_grad=True), torch.zeros(2, H), torch.eye(H), torch.full((H,), 0.9),
            torch.full((H,), 0.1), None, 0, 0, "torch", True)
    out, h_n, _ = ops._EagerChain.apply(*args)
    (out.sum() + h_n.sum()).backward()
    assert not calls, "the eager chain's Function.apply went through inspect.signature"
    assert args[0].grad is not None


@pytest.mark.parametrize("fast", [True, False])
def test_double_backward_is_refused_by_name(monkeypatch, fast):
    """create_graph=True gives a first gradient that remembers the chain; differentiating it again raises
    a message naming what works instead of silently treating it as a constant: both paths."""
    from wcrnn_kernels import ops, wcrnn_chain
    if not fast:
        monkeypatch.setattr(ops, "_plain_eager", lambda *a: False)
    H = 4
    w = (torch.randn(H, H) * 0.3).requires_grad_()
    out, _ = wcrnn_chain(torch.randn(3, 2, H), torch.zeros(2, H), w, 0, torch.full((H,), 0.9), 0.1, backend="torch")
    g, = torch.autograd.grad(out.square().sum(), w, create_graph=True)
    assert g.requires_grad
    with pytest.raises(RuntimeError, match=r"double backward.*not implemented by the fused WCRNN kernels.*"
                                           r"torch\.func.*backend='reference'"):
        g.sum().backward()


def test_compile_with_packed_input_breaks_the_graph_quietly(caplog):
    """A PackedSequence's layout has data-dependent sizes: torch.compile runs it eagerly (a graph break that
    Dynamo logged as a warning, 13 lines per compile, from an int() of batch_sizes) and the rest compiled,
    matching eager at several batch sizes; fullgraph=True refuses packed input with the reason."""
    import logging
    from torch.nn.utils.rnn import pack_padded_sequence
    torch._dynamo.reset()
    torch.manual_seed(5)
    model = FusedWCRNN(3, 4, num_layers=2, bidirectional=True)
    compiled = torch.compile(model, backend="aot_eager")
    with caplog.at_level(logging.WARNING, logger="torch._dynamo"):
        for B in (3, 5):
            lens = torch.randint(1, 7, (B,))
            lens[0] = 6
            x = torch.randn(6, B, 3, requires_grad=True)
            out, h_n = compiled(pack_padded_sequence(x, lens, enforce_sorted=False))
            e_out, e_h = model(pack_padded_sequence(x, lens, enforce_sorted=False))
            torch.testing.assert_close(out.data, e_out.data, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(h_n, e_h, rtol=1e-5, atol=1e-6)
            g, = torch.autograd.grad(out.data.sum() + h_n.sum(), x)
            torch.testing.assert_close(g, torch.autograd.grad(e_out.data.sum() + e_h.sum(), x)[0],
                                       rtol=1e-5, atol=1e-6)
    assert not [r.getMessage() for r in caplog.records if "Graph break" in r.getMessage()]
    torch._dynamo.reset()
    packed = pack_padded_sequence(torch.randn(4, 2, 3), torch.tensor([4, 2]))
    with pytest.raises(Exception, match="PackedSequence's layout has data-dependent sizes"):
        torch.compile(model, fullgraph=True, backend="aot_eager")(packed)


def test_importing_and_running_the_package_does_not_import_dynamo():
    """torch._dynamo costs about 0.9 s and 140 MB to import; a program that never compiles (every DataLoader
    worker it spawns included) must not pay it for `import wcrnn_kernels` or for eager calls. A fresh process
    imports the package and runs a module forward and backward, a PackedSequence (whose layout helper carries
    the compile-disable marker) and the op, on the CPU."""
    import subprocess
    import sys
    code = (
        "import sys, torch\n"
        "import wcrnn_kernels as w\n"
        "assert 'torch._dynamo' not in sys.modules, 'on import'\n"
        "from torch.nn.utils.rnn import pack_padded_sequence\n"
        "m = w.FusedWCRNN(3, 8, num_layers=2, bidirectional=True)\n"
        "out, h = m(torch.randn(5, 2, 3, requires_grad=True))\n"
        "(out.sum() + h.sum()).backward()\n"
        "p, _ = m(pack_padded_sequence(torch.randn(5, 3, 3), [5, 3, 2]))\n"
        "w.wcrnn_chain(torch.randn(4, 2, 8), torch.zeros(2, 8), torch.randn(8, 8) / 8, 0, torch.tensor(0.9), torch.tensor(0.1))\n"
        "w.available_backends()\n"
        "assert 'torch._dynamo' not in sys.modules, 'on the calls'\n"
        "print('clean')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("clean"), res.stdout + res.stderr


def test_lazy_compile_markers_match_torchs_decorators():
    """The markers of wcrnn_kernels._lazy_dynamo set what torch's own decorators set, under the names Dynamo
    reads (so a torch that renames them fails here, not silently in a trace)."""
    from wcrnn_kernels import _lazy_dynamo

    def ours():
        return 1

    def theirs():
        return 1

    assert torch._dynamo.assume_constant_result(theirs) is theirs
    assert _lazy_dynamo.assume_constant_result(ours) is ours
    assert vars(ours) == vars(theirs) == {"_dynamo_marked_constant": True}

    def plain():
        return 1

    reason = "a reason"
    disabled = torch.compiler.disable(plain, reason=reason)
    lazy = _lazy_dynamo.compiler_disable(reason)(plain)
    for name in ("_torchdynamo_disable", "_torchdynamo_disable_msg"):
        assert getattr(lazy, name) == getattr(disabled, name), name
    assert lazy() == 1 and lazy.__name__ == "plain"
    with pytest.raises(Exception, match="a reason"):  # the marker alone keeps a fullgraph trace out, with the reason
        torch.compile(lambda x: lazy() + x, fullgraph=True, backend="eager")(torch.ones(1))
