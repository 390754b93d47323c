"""FusedWCRNN: equivalence with nn.RNN, every gradient against the reference, nn.RNN's behaviours."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from helpers import assert_all_close, setup_target
from wcrnn_kernels import FusedWCRNN

pytestmark = pytest.mark.usefixtures("poison_empty")

F64 = torch.float64


def grads_of(model, inputs, outputs, seed=11):
    """Gradients of <output, G> + <h_n, G'> wrt the inputs and every parameter of the model (by name)."""
    out, h_n = outputs
    out_t = out.data if isinstance(out, PackedSequence) else out
    g = torch.Generator().manual_seed(seed)
    loss = (out_t * torch.randn(out_t.shape, generator=g, dtype=F64).to(out_t)).sum() + \
        (h_n * torch.randn(h_n.shape, generator=g, dtype=F64).to(h_n)).sum()
    names = [n for n, p in model.named_parameters()]
    tensors = list(inputs) + [p for _, p in model.named_parameters()]
    grads = torch.autograd.grad(loss, tensors, retain_graph=True)
    return dict(zip([f"input{i}" for i in range(len(inputs))] + names, grads))


RNN_CONFIGS = [
    dict(num_layers=1),
    dict(num_layers=2, batch_first=True),
    dict(num_layers=3, bidirectional=True),
    dict(num_layers=2, bias=False, nonlinearity="relu"),
    dict(num_layers=2, bidirectional=True, batch_first=True, nonlinearity="relu"),
]


@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("cfg", RNN_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_from_rnn_reproduces_nn_rnn(cfg, with_hx, backend):
    torch.manual_seed(0)
    rnn = nn.RNN(5, 7, **cfg).double()
    model = FusedWCRNN.from_rnn(rnn, residual="none", gamma=1.0, backend=backend)
    T, B = 6, 3
    x = torch.randn((B, T, 5) if cfg.get("batch_first") else (T, B, 5), dtype=F64, requires_grad=True)
    D = 2 if cfg.get("bidirectional") else 1
    hx = torch.randn(cfg["num_layers"] * D, B, 7, dtype=F64, requires_grad=True) if with_hx else None
    inputs = [x] + ([hx] if with_hx else [])
    exp, act = rnn(x, hx), model(x, hx)
    assert_all_close(act, exp, rtol=1e-12, names=("output", "h_n"))
    ge, ga = grads_of(rnn, inputs, exp), grads_of(model, inputs, act)
    assert set(ge) == set(ga)
    assert_all_close([ga[k] for k in ge], list(ge.values()), rtol=1e-11, names=list(ge))


@pytest.mark.parametrize("cfg", [dict(num_layers=1), dict(num_layers=2, bidirectional=True),
                                 dict(num_layers=2, batch_first=True)])
def test_packed_sequence_matches_nn_rnn(cfg):
    torch.manual_seed(1)
    rnn = nn.RNN(4, 6, **cfg).double()
    model = FusedWCRNN.from_rnn(rnn, residual="none", gamma=1.0)
    T, B = 7, 5
    bf = cfg.get("batch_first", False)
    x = torch.randn((B, T, 4) if bf else (T, B, 4), dtype=F64, requires_grad=True)
    lengths = torch.tensor([3, 7, 1, 7, 5])  # unsorted, with ties
    D = 2 if cfg.get("bidirectional") else 1
    hx = torch.randn(cfg["num_layers"] * D, B, 6, dtype=F64, requires_grad=True)
    packed = pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=False)
    exp, act = rnn(packed, hx), model(packed, hx)
    assert isinstance(act[0], PackedSequence)
    for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
        assert torch.equal(getattr(act[0], field), getattr(exp[0], field)), field
    assert_all_close((act[0].data, act[1]), (exp[0].data, exp[1]), rtol=1e-12, names=("output", "h_n"))
    ge, ga = grads_of(rnn, [x, hx], exp), grads_of(model, [x, hx], act)
    assert_all_close([ga[k] for k in ge], list(ge.values()), rtol=1e-11, names=list(ge))
    padded, out_len = pad_packed_sequence(act[0], batch_first=bf)
    assert torch.equal(out_len, lengths)


def test_unbatched_input_matches_nn_rnn():
    torch.manual_seed(2)
    rnn = nn.RNN(3, 4, num_layers=2, bidirectional=True).double()
    model = FusedWCRNN.from_rnn(rnn, residual="none", gamma=1.0)
    x = torch.randn(5, 3, dtype=F64, requires_grad=True)
    hx = torch.randn(4, 4, dtype=F64, requires_grad=True)
    exp, act = rnn(x, hx), model(x, hx)
    assert act[0].shape == (5, 8) and act[1].shape == (4, 4)
    assert_all_close(act, exp, rtol=1e-12, names=("output", "h_n"))
    ge, ga = grads_of(rnn, [x, hx], exp), grads_of(model, [x, hx], act)
    assert_all_close([ga[k] for k in ge], list(ge.values()), rtol=1e-11, names=list(ge))


KIND_ARGS = {
    "none": dict(),
    "scalar": dict(r=0.97),
    "diagonal": dict(r="rand"),
    "rotational": dict(r="rand"),
    "dense": dict(r="rand"),
}


def make_wcrnn(kind, I, H, backend, seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(KIND_ARGS[kind])
    if args.get("r") == "rand":
        shape = {"diagonal": (H,), "rotational": (H // 2,), "dense": (H, H)}[kind]
        args["r"] = 0.9 + 0.1 * torch.rand(shape, dtype=F64) if kind != "dense" else \
            0.9 * torch.linalg.qr(torch.randn(H, H, dtype=F64))[0]
    model = FusedWCRNN(I, H, residual=kind, gamma=torch.linspace(0.2, 0.6, H, dtype=F64),
                       learn_residual=kind != "none", learn_gamma=True, backend=backend, dtype=F64, **args, **kw)
    return model


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "packed"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("kind", ["none", "scalar", "diagonal", "rotational", "dense"])
@pytest.mark.parametrize("T,B,H", [(1, 1, 1), (5, 3, 3), (4, 3, 17), (3, 2, 130)])
def test_module_every_gradient_matches_reference(target, monkeypatch, kind, nonlinearity, lengths, T, B, H):
    """Output, h_n and the gradient of input, hx, W_ih, W_hh, both biases, learnable r/theta and gamma, on
    every target (helpers.TARGETS) against the reference module."""
    check_every_gradient(target, monkeypatch, kind, nonlinearity, lengths, T, B, H)


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "packed"])
@pytest.mark.parametrize("kind,nonlinearity", [("none", "tanh"), ("scalar", "tanh"), ("diagonal", "relu"),
                                               ("rotational", "tanh"), ("dense", "tanh")])
@pytest.mark.parametrize("T,B,H", [(1, 1, 1), (5, 3, 3), (3, 2, 130)])
def test_module_without_saved_preactivations_every_gradient_matches_reference(target, monkeypatch, kind,
                                                                               nonlinearity, lengths, T, B, H):
    """save_preactivations=False (the backward recomputes the input projection and a_t): the same check."""
    check_every_gradient(target, monkeypatch, kind, nonlinearity, lengths, T, B, H, save_preactivations=False)


def check_every_gradient(target, monkeypatch, kind, nonlinearity, lengths, T, B, H, **module_kw):
    setup_target(target, monkeypatch)
    target.require(hidden_size=H)
    if kind == "rotational" and H % 2:
        H += 1
    kw = dict(num_layers=2, bidirectional=True, nonlinearity=nonlinearity)
    ref = make_wcrnn(kind, 3, H, "reference", **kw)
    model = make_wcrnn(kind, 3, H, target.backend, **kw, **module_kw).to(target.device)
    model.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, 3, dtype=F64, requires_grad=True)
    hx = 0.5 * torch.randn(4, B, H, dtype=F64)
    hx.requires_grad_(True)
    xd, hd = ((x, hx) if target.device == "cpu" else
              (x.detach().to(target.device).requires_grad_(True), hx.detach().to(target.device).requires_grad_(True)))
    inp, inp_d = x, xd
    if lengths:
        L = torch.randint(1, T + 1, (B,))
        L[0] = T
        inp = pack_padded_sequence(x, L, enforce_sorted=False)
        inp_d = pack_padded_sequence(xd, L, enforce_sorted=False)
    exp, act = ref(inp, hx), model(inp_d, hd)
    to_t = (lambda o: o.data) if lengths else (lambda o: o)
    assert_all_close((to_t(act[0]).cpu(), act[1].cpu()), (to_t(exp[0]), exp[1]), rtol=1e-10, names=("output", "h_n"))
    ge, ga = grads_of(ref, [x, hx], exp), grads_of(model, [xd, hd], act)
    ga = {k: v.cpu() for k, v in ga.items()}
    expected_names = {"input0", "input1", "gamma_l0", "gamma_l1_reverse", "weight_hh_l1", "bias_hh_l0_reverse"}
    assert expected_names <= set(ge)
    if kind != "none":
        assert {"r_l0", "r_l1_reverse"} <= set(ge)
    if kind == "rotational":
        assert "theta_l0" in ge
    assert_all_close([ga[k] for k in ge], list(ge.values()), rtol=1e-10, names=list(ge))


@pytest.mark.parametrize("residual", ["none", "scalar"])
def test_module_learned_scalar_r_and_gamma_match_reference(target, monkeypatch, residual):
    """A scalar r and gamma reach the chain op 0-d (broadcast there): their gradients, 0-d, on every target."""
    setup_target(target, monkeypatch)
    target.require(hidden_size=7)
    kw = dict(residual=residual, gamma=0.3, learn_gamma=True, num_layers=2, bidirectional=True, dtype=F64)
    if residual == "scalar":
        kw.update(r=0.97, learn_residual=True)
    torch.manual_seed(5)
    ref = FusedWCRNN(3, 7, backend="reference", **kw)
    model = FusedWCRNN(3, 7, backend=target.backend, **kw).to(target.device)
    model.load_state_dict(ref.state_dict())
    assert model.gamma_l0.shape == ()
    x = torch.randn(6, 2, 3, dtype=F64, requires_grad=True)
    xd = x.detach().to(target.device).requires_grad_(True)
    exp, act = ref(x), model(xd)
    assert_all_close((act[0].cpu(), act[1].cpu()), exp, rtol=1e-10, names=("output", "h_n"))
    ge, ga = grads_of(ref, [x], exp), grads_of(model, [xd], act)
    assert ga["gamma_l1_reverse"].shape == () and (residual == "none" or ga["r_l0"].shape == ())
    assert_all_close([ga[k].cpu() for k in ge], list(ge.values()), rtol=1e-10, names=list(ge))


def test_same_seed_gives_nn_rnn_initialisation_and_state_dict_loads():
    torch.manual_seed(3)
    rnn = nn.RNN(4, 8, num_layers=2, bidirectional=True)
    torch.manual_seed(3)
    model = FusedWCRNN(4, 8, num_layers=2, bidirectional=True)
    for name, p in rnn.named_parameters():
        assert torch.equal(getattr(model, name), p), name
    other = FusedWCRNN(4, 8, num_layers=2, bidirectional=True)
    missing, unexpected = other.load_state_dict(rnn.state_dict())  # strict, as every client loads
    assert not unexpected and not missing
    for name, p in rnn.named_parameters():
        assert torch.equal(getattr(other, name), p), name


def test_residual_and_gamma_are_buffers_by_default_and_parameters_on_request():
    m = FusedWCRNN(3, 6, residual="rotational", r=0.99)
    assert {n for n, _ in m.named_parameters()} == {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}
    assert {n for n, _ in m.named_buffers()} == {"r_l0", "theta_l0", "gamma_l0"}
    assert m.r_l0.shape == (3,) and m.theta_l0.shape == (3,) and m.gamma_l0.shape == ()
    m = FusedWCRNN(3, 6, residual="dense", learn_residual=True, learn_gamma=True, gamma=torch.full((6,), 0.1))
    params = dict(m.named_parameters())
    assert params["r_l0"].shape == (6, 6) and torch.equal(params["r_l0"].detach(), torch.eye(6))
    assert params["gamma_l0"].shape == (6,)
    m = FusedWCRNN(3, 6, residual="none", gamma=1.0)
    assert not hasattr(m, "r_l0")


def test_dropout_only_in_training_and_between_layers():
    torch.manual_seed(4)
    m = FusedWCRNN(3, 5, num_layers=2, dropout=0.5, residual="none", gamma=1.0).double()
    x = torch.randn(6, 2, 3, dtype=F64)
    m.eval()
    a, b = m(x)[0], m(x)[0]
    assert torch.equal(a, b)
    m.train()
    torch.manual_seed(5)
    c = m(x)[0]
    assert not torch.allclose(a, c)
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        single = FusedWCRNN(3, 5, num_layers=1, dropout=0.5).double().train()
    assert torch.equal(single(x)[0], single(x)[0])  # no dropout after the last layer


def _clones_in_graph(t):
    """How many CloneBackward0 nodes the autograd graph of t has."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            todo.extend(f for f, _ in fn.next_functions)
    return sum(type(fn).__name__ == "CloneBackward0" for fn in seen)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("I", [1, 2, 7, 12, 16])
def test_cpu_input_projection_of_narrow_inputs(I, batch_first, monkeypatch):
    """At 2 <= I <= 12 the CPU module multiplies by a contiguous copy of W_ih^T (module._input_projection, for a
    faster weight gradient; benchmarks/bench_projection.py): the same outputs and gradients as F.linear's to
    float32 rounding, bitwise the same with grad, without and in inference mode (batch_first: a transposed
    input, which F.linear's grad and no-grad forms once rounded differently at B = 2-6), the copy in the graph
    only at those widths, and torch.jit.trace without a warning from it."""
    import inspect
    import warnings

    import wcrnn_kernels.module as module
    torch.manual_seed(0)
    model = FusedWCRNN(I, 32, num_layers=2, bidirectional=True, batch_first=batch_first)
    for B in (2, 3, 5):
        x = torch.randn((B, 50, I) if batch_first else (50, B, I))
        out, h = model(x)
        with torch.no_grad():
            out_ng, h_ng = model(x)
        with torch.inference_mode():
            out_im, h_im = model(x)
        assert torch.equal(out_ng, out) and torch.equal(h_ng, h), B
        assert torch.equal(out_im, out) and torch.equal(h_im, h), B
    x = torch.randn((3, 7, I) if batch_first else (7, 3, I), requires_grad=True)
    out, h = model(x)
    grads = grads_of(model, [x], (out, h))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, (x.detach(),), check_trace=False)
    lines, first = inspect.getsourcelines(module._input_projection)
    assert not [w for w in caught if w.filename == module.__file__ and first <= w.lineno < first + len(lines)]
    assert torch.equal(traced(x.detach())[0], out.detach())
    monkeypatch.setattr(module, "_SKINNY_INPUT", range(0))  # F.linear as given
    out_l, h_l = model(x)
    # only the first layer's projection is narrow (the second layer's input is 64 wide): a copy of W_ih^T per
    # direction (and of a batch_first input, which F.linear copies too, in its own graph nodes)
    assert (_clones_in_graph(out) > _clones_in_graph(out_l)) == (2 <= I <= 12)
    assert_all_close((out, h), (out_l, h_l), rtol=1e-6, names=("output", "h_n"))
    grads_l = grads_of(model, [x], (out_l, h_l))
    assert_all_close(list(grads.values()), [grads_l[k] for k in grads], rtol=1e-5, names=list(grads))


def test_batch_zero_and_repr():
    m = FusedWCRNN(3, 4, num_layers=2, bidirectional=True)
    out, h = m(torch.zeros(5, 0, 3))
    assert out.shape == (5, 0, 8) and h.shape == (4, 0, 4)
    r = repr(m)
    assert "FusedWCRNN(3, 4, num_layers=2, bidirectional=True, residual='scalar', r=1, gamma=0.01" in r
    assert "backend='auto'" in r


def test_module_moves_with_to_and_double():
    m = FusedWCRNN(3, 4, residual="diagonal", r=torch.full((4,), 0.9)).double()
    assert m.r_l0.dtype == F64 and m.gamma_l0.dtype == F64 and m.weight_hh_l0.dtype == F64
    out, h = m(torch.randn(2, 1, 3, dtype=F64))
    assert out.dtype == F64


@pytest.mark.targets("cuda", "triton-gpu")
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_forward_and_backward_never_make_the_host_wait_for_the_gpu(target, monkeypatch, packed):
    """torch.cuda.set_sync_debug_mode("error") raises at any host-device synchronisation (a GPU mask used for
    indexing, lengths checked on the GPU, .item()): a forward and backward, packed too, must have none, or the
    host stops feeding the GPU at every call."""
    setup_target(target, monkeypatch)
    torch.manual_seed(0)
    model = FusedWCRNN(3, 16, num_layers=2, bidirectional=True, backend=target.backend).to(target.device)
    x = torch.randn(7, 4, 3, device=target.device, requires_grad=True)
    inp = x
    if packed:  # packed once (its sorted_indices' copy to the GPU waits), from a leaf: step() runs twice
        p = pack_padded_sequence(x.detach(), torch.tensor([7, 5, 3, 1]), enforce_sorted=False)
        inp = PackedSequence(p.data.requires_grad_(), p.batch_sizes, p.sorted_indices, p.unsorted_indices)

    def step():
        out, h = model(inp)
        ((out.data if packed else out).square().sum() + h.sum()).backward()

    step()  # the first call may build, compile or autotune (which synchronises)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)


# ------------------------------------------------------------------------ save_preactivations=False
def _big_saved_storages(model, x, hidden=8, T=6, B=3):
    """Distinct storages of T x B x `hidden` elements or more that autograd saves for the backward of model(x)."""
    big = set()

    def pack(t):
        if t.numel() >= T * B * hidden:
            big.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, h = model(x)
    return big, out, h


@pytest.mark.parametrize("mode", ["eager", "packed", "compiled"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_without_saved_preactivations_only_the_outputs_are_kept(backend, bidirectional, mode):
    """Between forward and backward each layer keeps its output only (nn.RNN's activation memory on the CPU,
    docs/design.md section 5), where by default it keeps its output and its pre-activations; the layers'
    input projections save their input either way (for layer 1, layer 0's output: the same storage).
    Bidirectional, 2 layers: by default each direction's output and a (8) and layer 1's input, which both its
    directions' projections save (its second direction reverses u, not a copy of its input: 9); without, the
    outputs (4) and layer 1's input: 5. (Layer 0's second direction reverses its narrower input: a copy of
    T x B x I, under the threshold.) The same under torch.compile (fullgraph, AOT autograd): the lean op is a
    custom op there, whose recompute AOT cannot merge with the forward's projection and save instead. The same
    with a PackedSequence (lengths): the reversal in time of a projection u must keep no copy of u (a gather's
    backward did; found by a client test)."""
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4, requires_grad=True)  # I < H: the input is no big storage
    torch._dynamo.reset()  # (each module compiles afresh; the process's other compiles count to Dynamo's limit)
    kept = {}
    for save in (True, False):
        m = FusedWCRNN(4, 8, num_layers=2, backend=backend, save_preactivations=save, bidirectional=bidirectional)
        run = torch.compile(m, backend="aot_eager", fullgraph=True) if mode == "compiled" else m
        inp = pack_padded_sequence(x, torch.tensor([6, 2, 4]), enforce_sorted=False) if mode == "packed" else x
        big, out, h = _big_saved_storages(run, inp)
        big.discard(x.untyped_storage().data_ptr())
        out = out.data if mode == "packed" else out
        kept[save] = len(big)
        if not bidirectional and mode != "packed":
            assert out.untyped_storage().data_ptr() in big  # the last layer's output is among them
        (out.sum() + h.sum()).backward()
    assert kept == ({True: 9, False: 5} if bidirectional else {True: 4, False: 2})


def test_without_saved_preactivations_the_same_values_and_gradients(monkeypatch):
    """Forward bitwise equal to the default (the same projection and chain); gradients equal to rounding (a is
    recomputed by a GEMM, not taken from the chain's kernel), also in a second backward (retain_graph) and
    with batch_first; under no_grad the default path runs (nothing is saved there); under torch.compile the lean
    custom op, with the same results."""
    torch.manual_seed(1)
    kw = dict(num_layers=2, bidirectional=True, batch_first=True, residual="rotational", learn_residual=True,
              learn_gamma=True, dtype=F64)
    ref = FusedWCRNN(3, 6, **kw)
    lean = FusedWCRNN(3, 6, save_preactivations=False, **kw)
    lean.load_state_dict(ref.state_dict())
    x = torch.randn(2, 9, 3, dtype=F64, requires_grad=True)
    exp, act = ref(x), lean(x)
    assert torch.equal(exp[0], act[0]) and torch.equal(exp[1], act[1])
    ge = grads_of(ref, [x], exp)
    for _ in range(2):  # grads_of retains the graph: the second backward recomputes from the same saved state
        ga = grads_of(lean, [x], act)
        assert_all_close(list(ga.values()), list(ge.values()), rtol=1e-12, names=list(ge))
    with torch.no_grad():
        assert torch.equal(lean(x)[0], exp[0])
    torch._dynamo.reset()
    compiled = torch.compile(lean, backend="aot_eager", fullgraph=True)
    out, h = compiled(x)
    torch.testing.assert_close(out, exp[0], rtol=1e-12, atol=1e-12)
    assert_all_close(list(grads_of(lean, [x], (out, h)).values()), list(ge.values()), rtol=1e-10, names=list(ge))


@pytest.mark.parametrize("case", ["autocast-bfloat16", "bfloat16-model"])
def test_without_saved_preactivations_in_low_precision(case):
    """Under CPU autocast and for a bfloat16 model: outputs bitwise equal to the default path, every gradient
    in its tensor's dtype and equal to the default path's to low-precision rounding."""
    torch.manual_seed(2)
    dtype = torch.bfloat16 if case == "bfloat16-model" else torch.float32
    kw = dict(num_layers=2, residual="diagonal", learn_residual=True, learn_gamma=True, gamma=0.3, dtype=dtype)
    ref = FusedWCRNN(5, 16, **kw)
    lean = FusedWCRNN(5, 16, save_preactivations=False, **kw)
    lean.load_state_dict(ref.state_dict())
    x = torch.randn(12, 4, 5, dtype=dtype, requires_grad=True)
    grads = {}
    for name, m in (("ref", ref), ("lean", lean)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast-bfloat16"):
            out, h = m(x)
        assert out.dtype == torch.bfloat16
        loss = out.float().square().sum() + h.float().sum()
        params = [x] + list(m.parameters())
        grads[name] = (out, h, torch.autograd.grad(loss, params))
        assert [g.dtype for g in grads[name][2]] == [p.dtype for p in params]
    assert torch.equal(grads["ref"][0], grads["lean"][0]) and torch.equal(grads["ref"][1], grads["lean"][1])
    for a, b in zip(grads["lean"][2], grads["ref"][2]):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2 * b.float().abs().max().item())


def test_save_preactivations_argument():
    with pytest.raises(TypeError, match="save_preactivations: expected a bool"):
        FusedWCRNN(3, 4, save_preactivations="no")
    assert "save_preactivations=False" in repr(FusedWCRNN(3, 4, save_preactivations=False))
    assert "save_preactivations" not in repr(FusedWCRNN(3, 4))
    m = FusedWCRNN.from_rnn(nn.RNN(3, 4), save_preactivations=False)
    assert m.save_preactivations is False
    with pytest.raises(TypeError, match="save_preactivations: expected a bool"):
        m.save_preactivations = "False"  # set after construction: checked as the constructor checks it
    m.save_preactivations = True
    assert "save_preactivations" not in repr(m)
    old = FusedWCRNN(3, 4)
    del old.__dict__["_save_preactivations"]  # a module pickled before the argument existed
    assert old.save_preactivations is True
    old(torch.randn(2, 1, 3))


def test_without_saved_preactivations_create_graph_and_forward_mode(monkeypatch):
    """Found by a client test: a first-order gradient with create_graph=True works as by default (and a
    gradient of it is refused with the package's message, not autograd's about views made under no_grad);
    forward-mode AD runs the reference chain as by default (the lean Function has no jvp)."""
    import torch.autograd.forward_ad as fwad
    from wcrnn_kernels import ops
    monkeypatch.setattr(ops, "_REFERENCE_WARNED", [])  # said once per process: say it here
    torch.manual_seed(3)
    ref = FusedWCRNN(4, 8, num_layers=2, dtype=F64)
    lean = FusedWCRNN(4, 8, num_layers=2, dtype=F64, save_preactivations=False)
    lean.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 4, dtype=F64, requires_grad=True)
    got = []
    for m in (ref, lean):
        out, h = m(x)
        gs = torch.autograd.grad(out.square().sum() + h.sum(), [x] + list(m.parameters()), create_graph=True)
        assert all(g.requires_grad for g in gs)
        got.append(gs)
        with pytest.raises(RuntimeError, match="double backward.*not implemented by the fused WCRNN kernels"):
            gs[0].square().sum().backward()
    assert_all_close(list(got[1]), list(got[0]), rtol=1e-12, names=[str(i) for i in range(len(got[0]))])
    with pytest.warns(UserWarning, match="forward-mode AD"), fwad.dual_level():
        tangents = []
        for m in (ref, lean):
            out, _ = m(fwad.make_dual(x.detach(), torch.ones_like(x)))
            tangents.append(fwad.unpack_dual(out).tangent)
    torch.testing.assert_close(tangents[1], tangents[0], rtol=1e-12, atol=1e-12)
