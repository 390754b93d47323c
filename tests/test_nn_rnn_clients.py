"""What real nn.RNN clients do with the module (issue 13): strict nn.RNN state_dicts, from_rnn without
overrides, autocast, bad values, PackedSequence checks, the warning when "auto" loses the compiled backend."""
from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn as nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import wcrnn_kernels
from helpers import max_rel_err, require_backend
from wcrnn_kernels import FusedWCRNN

F64 = torch.float64


# ------------------------------------------------------------------------------------------- state dicts

@pytest.mark.parametrize("kw", [dict(), dict(residual="none", gamma=1.0), dict(residual="rotational", r=0.99),
                                dict(residual="dense", learn_residual=True, learn_gamma=True),
                                dict(residual="diagonal", r=torch.linspace(0.9, 1.0, 6), gamma=torch.full((6,), 0.2))],
                         ids=["default", "elman", "rotational", "dense-learned", "diagonal"])
def test_strict_load_of_an_nn_rnn_state_dict(kw):
    torch.manual_seed(0)
    rnn = nn.RNN(4, 6, num_layers=2, bidirectional=True)
    model = FusedWCRNN(4, 6, num_layers=2, bidirectional=True, **kw)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("r_", "theta_", "gamma_"))}
    assert before, "the module has residual / coupling state"
    result = model.load_state_dict(rnn.state_dict())  # strict=True, the default
    assert not result.missing_keys and not result.unexpected_keys
    for name, p in rnn.named_parameters():
        assert torch.equal(getattr(model, name), p), name
    for k, v in before.items():  # residual and gamma as constructed
        assert torch.equal(model.state_dict()[k], v), k


def test_strict_load_still_reports_a_partial_residual_state():
    """A FusedWCRNN state_dict that lost some (not all) of its residual / coupling keys is an error."""
    model = FusedWCRNN(3, 4, num_layers=2)
    sd = model.state_dict()
    del sd["gamma_l1"]
    with pytest.raises(RuntimeError, match='Missing key\\(s\\) in state_dict: "gamma_l1"'):
        FusedWCRNN(3, 4, num_layers=2).load_state_dict(sd)
    sd = model.state_dict()
    del sd["weight_hh_l0"]
    with pytest.raises(RuntimeError, match='"weight_hh_l0"'):
        FusedWCRNN(3, 4, num_layers=2).load_state_dict(sd)
    other = FusedWCRNN(3, 4, num_layers=2, r=0.5, gamma=0.3)
    other.load_state_dict(model.state_dict())  # a full FusedWCRNN state_dict overrides r and gamma
    assert other.r_l0.item() == 1.0 and other.gamma_l1.item() == pytest.approx(0.01)


def test_nn_rnn_state_dict_under_a_prefix():
    """Inside a client model (the state_dict keys carry a prefix) the same holds."""
    class Client(nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.encoder = nn.Embedding(10, 3)
            self.rnn = rnn
    torch.manual_seed(1)
    src = Client(nn.RNN(3, 5))
    dst = Client(FusedWCRNN(3, 5, residual="none", gamma=1.0))
    dst.load_state_dict(src.state_dict())
    x = torch.randint(0, 10, (6, 2))
    torch.testing.assert_close(dst.rnn(dst.encoder(x))[0], src.rnn(src.encoder(x))[0], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------- from_rnn

@pytest.mark.parametrize("cfg", [dict(num_layers=1), dict(num_layers=2, bidirectional=True, batch_first=True),
                                 dict(num_layers=2, nonlinearity="relu", bias=False)],
                         ids=["1layer", "2layer-bidir", "relu-nobias"])
def test_from_rnn_without_overrides_is_the_rnn(cfg):
    torch.manual_seed(2)
    rnn = nn.RNN(3, 5, **cfg).double()
    model = FusedWCRNN.from_rnn(rnn)
    assert model.residual == "none" and float(model.gamma_l0) == 1.0
    x = torch.randn(4, 6, 3, dtype=F64)
    for a, e in zip(model(x), rnn(x)):
        assert max_rel_err(a, e) < 1e-12


@pytest.mark.parametrize("wrap", ["orthogonal", "weight_norm", "spectral_norm"])
def test_parametrized_weights_as_nn_rnn(wrap):
    # torch.nn.utils.parametrizations on the recurrent weights (a common way to keep an RNN stable): the
    # parameter leaves _parameters for a property, which the module must read, gradients reaching its original
    from torch.nn.utils import parametrizations
    torch.manual_seed(3)
    rnn = nn.RNN(3, 6, num_layers=2, bidirectional=True).double()
    model = FusedWCRNN.from_rnn(rnn)
    for m in (rnn, model):
        for name in ("weight_hh_l0", "weight_hh_l1_reverse"):
            getattr(parametrizations, wrap)(m, name)
    model.load_state_dict(rnn.state_dict(), strict=False)  # the same originals (and spectral_norm's vectors)
    x = torch.randn(5, 2, 3, dtype=F64)
    rnn.eval(), model.eval()  # spectral_norm: no power iteration, both use the same u, v
    for a, e in zip(model(x), rnn(x)):
        assert max_rel_err(a, e) < 1e-12
    model(x)[0].square().sum().backward()
    rnn(x)[0].square().sum().backward()
    ours = dict(model.named_parameters())
    theirs = dict(rnn.named_parameters())
    assert set(theirs) <= set(ours) and any("original" in name for name in theirs)
    for name, p in theirs.items():  # every weight's gradient, the parametrizations' originals included
        assert max_rel_err(ours[name].grad, p.grad) < 1e-10, name


@pytest.mark.parametrize("cfg", [dict(), dict(num_layers=2, bidirectional=True)], ids=["1layer", "2layer-bidir"])
def test_truncated_bptt_detaches_h_n_in_place_as_with_nn_rnn(cfg):
    # h.detach_() between chunks (truncated backpropagation through time) needs an h_n that is no view
    torch.manual_seed(4)
    for m in (nn.RNN(3, 4, **cfg), FusedWCRNN(3, 4, **cfg)):
        h = None
        for _ in range(2):
            out, h = m(torch.randn(5, 2, 3), h)
            out.sum().backward()
            h.detach_()
        assert not h.requires_grad and h._base is None


def test_from_rnn_overrides_and_dropout_warning():
    rnn = nn.RNN(3, 6, num_layers=2, dropout=0.25)
    wc = FusedWCRNN.from_rnn(rnn, residual="scalar", r=1.0, gamma=0.01)
    assert (wc.residual, float(wc.r_l0), float(wc.gamma_l0), wc.dropout) == ("scalar", 1.0, pytest.approx(0.01), 0.25)
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        one = nn.RNN(3, 6, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nn.RNN warned when it was made; from_rnn does not repeat it
        FusedWCRNN.from_rnn(one)
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        FusedWCRNN.from_rnn(rnn, num_layers=1)  # an override that makes the dropout useless does warn


# ---------------------------------------------------------------------------------------------- values

@pytest.mark.parametrize("kwargs,match", [
    (dict(gamma=float("nan")), "gamma: expected a finite number, got nan"),
    (dict(gamma=float("inf")), "gamma: expected a finite number, got inf"),
    (dict(gamma=torch.tensor([0.1, float("nan"), 0.1, 0.1])), r"gamma: expected finite values, got nan at index \(1,\)"),
    (dict(gamma=-0.5), "gamma: expected a coupling >= 0, got -0.5"),
    (dict(gamma=torch.tensor([0.1, -0.1, 0.1, 0.1])), "gamma: expected a coupling >= 0"),
    (dict(r=float("nan")), "r: expected a finite number, got nan"),
    (dict(r=float("-inf")), "r: expected a finite number, got -inf"),
    (dict(residual="diagonal", r=torch.tensor([1.0, float("nan"), 1.0, 1.0])),
     r"r: expected finite values, got nan at index \(1,\)"),
    (dict(residual="dense", r=torch.full((4, 4), float("inf"))), r"r: expected finite values, got inf at index \(0, 0\)"),
    (dict(residual="rotational", theta=torch.tensor([0.1, float("nan")])), "theta: expected finite values"),
    (dict(residual="none", r=0.5), "r: residual='none' has no residual map, so r=0.5 would be ignored"),
    (dict(residual="none", r=1.0), "r: residual='none' has no residual map"),
    (dict(residual="none", learn_residual=True), "learn_residual: residual='none' has no residual parameters"),
])
def test_bad_values_are_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FusedWCRNN(3, 4, **kwargs)


def test_values_that_stay_allowed():
    """gamma = 0 (a linear residual network) and a negative r (an oscillating residual) mean what they say."""
    x = torch.randn(5, 2, 3, dtype=F64)
    m = FusedWCRNN(3, 4, r=-0.5, gamma=0.0, dtype=F64)
    h0 = torch.randn(1, 2, 4, dtype=F64)
    out, h = m(x, h0)
    torch.testing.assert_close(h, (-0.5) ** 5 * h0, rtol=1e-12, atol=1e-14)


def test_single_layer_dropout_warns_like_nn_rnn():
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        nn.RNN(3, 4, dropout=0.5)
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        FusedWCRNN(3, 4, dropout=0.5)
    assert [str(w.message) for w in ours] == [str(w.message) for w in theirs] and len(ours) == 1
    assert ours[0].filename == __file__  # points at the caller, as nn.RNN's does
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FusedWCRNN(3, 4, num_layers=2, dropout=0.5)
        FusedWCRNN(3, 4, dropout=0.0)


def test_chain_weights_index_errors():
    m = FusedWCRNN(3, 4, num_layers=2)
    with pytest.raises(ValueError, match=r"layer: expected an integer in \[0, 1\] \(num_layers = 2\), got 5"):
        m.chain_weights(5, 0)
    with pytest.raises(ValueError, match="layer: expected an integer in"):
        m.chain_weights(-1)
    with pytest.raises(ValueError, match=r"direction: expected 0 \(the module is not bidirectional\), got 1"):
        m.chain_weights(0, 1)
    b = FusedWCRNN(3, 4, bidirectional=True)
    assert b.chain_weights(0, 1).w_hh is b.weight_hh_l0_reverse
    with pytest.raises(ValueError, match=r"direction: expected 0 or 1 \(bidirectional\), got 2"):
        b.chain_weights(0, 2)


def test_packed_sequence_that_does_not_fit_its_data():
    m = FusedWCRNN(3, 4)
    with pytest.raises(ValueError, match="batch_sizes add up to 6 steps .* T = 3 steps.* data has 4 rows"):
        m(PackedSequence(torch.randn(4, 3), torch.tensor([2, 2, 2])))
    with pytest.raises(ValueError, match="batch_sizes must be positive and non-increasing"):
        m(PackedSequence(torch.randn(5, 3), torch.tensor([2, 3])))
    with pytest.raises(ValueError, match="data must be 2-D"):
        m(PackedSequence(torch.randn(4, 1, 3), torch.tensor([2, 2])))
    ok = pack_padded_sequence(torch.randn(5, 2, 3), torch.tensor([5, 2]))
    assert m(ok)[0].data.shape == (7, 4)


# --------------------------------------------------------------------------------------------- autocast

AMP_BACKENDS = ["reference", "torch", "cpp", "triton"]


def _amp_case(backend, cfg, seed=0):
    torch.manual_seed(seed)
    rnn = nn.RNN(5, 16, **cfg)
    model = FusedWCRNN.from_rnn(rnn, backend=backend)
    x = torch.randn(12, 3, 5)
    return rnn, model, x


def _run(m, x, hx=None, amp=True):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out, h = m(x, hx)
    loss = (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum() + h.float().sum()
    grads = torch.autograd.grad(loss, list(m.parameters()))
    return out, h, grads


@pytest.mark.parametrize("backend", AMP_BACKENDS)
@pytest.mark.parametrize("cfg", [dict(num_layers=1), dict(num_layers=2, bidirectional=True)], ids=["1layer", "2bidir"])
def test_autocast_cpu_bfloat16_behaves_as_nn_rnn(backend, cfg):
    """Output and h_n in bfloat16, float32 gradients for every parameter, and errors against the float32 run
    no larger than nn.RNN's own under the same autocast (plus bfloat16's resolution)."""
    if backend != "reference":
        require_backend(backend, dtype=torch.float32, hidden_size=16)
    rnn, model, x = _amp_case(backend, cfg)
    r_out, r_h, r_g = _run(rnn, x)
    m_out, m_h, m_g = _run(model, x)
    assert (m_out.dtype, m_h.dtype) == (r_out.dtype, r_h.dtype) == (torch.bfloat16, torch.bfloat16)
    assert m_out.shape == r_out.shape and m_h.shape == r_h.shape
    f_out, f_h, f_g = _run(model, x, amp=False)  # the float32 run of the same network
    assert f_out.dtype == torch.float32
    rf_out, rf_h, rf_g = _run(rnn, x, amp=False)
    eps = 2 ** -8
    assert max_rel_err(m_out, f_out) <= max(max_rel_err(r_out, rf_out), eps)
    assert max_rel_err(m_h, f_h) <= max(max_rel_err(r_h, rf_h), eps)
    for (name, p), g, gf, rg, rgf in zip(model.named_parameters(), m_g, f_g, r_g, rf_g):
        assert g.dtype == p.dtype == torch.float32, name
        assert max_rel_err(g, gf) <= max(2 * max_rel_err(rg, rgf), 4 * eps), name


@pytest.mark.parametrize("backend", AMP_BACKENDS)
def test_autocast_cpu_accepts_what_nn_rnn_accepts(backend):
    """bfloat16 input, and a bfloat16 h_n carried into the next call as hx (stateful training under autocast)."""
    if backend != "reference":
        require_backend(backend, dtype=torch.float32, hidden_size=16)
    rnn, model, x = _amp_case(backend, dict(num_layers=2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, h_r = rnn(x.bfloat16())
        _, h_m = model(x.bfloat16())
        out_r, h_r = rnn(x, h_r)
        out_m, h_m = model(x, h_m)
    assert out_m.dtype == out_r.dtype and h_m.dtype == h_r.dtype
    with pytest.raises(ValueError, match="hx: dtype torch.float16: under autocast expected torch.float32 or torch.bfloat16"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x, h_m.half())


@pytest.mark.parametrize("backend", AMP_BACKENDS)
def test_autocast_keeps_the_residual_in_float32(backend):
    """r = 0.999 is 1.0 in bfloat16: a chain run in bfloat16 parameters would not decay at all. Decoupled
    (gamma = 0), h_n = r^T x0 exactly; 0.999^300 = 0.741."""
    if backend != "reference":
        require_backend(backend, dtype=torch.float32, hidden_size=4)
    m = FusedWCRNN(3, 4, r=0.999, gamma=0.0, backend=backend)
    x0 = torch.ones(1, 2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, h = m(torch.randn(300, 2, 3), x0)
    assert h.dtype == torch.bfloat16
    torch.testing.assert_close(h.float(), torch.full_like(x0, 0.999 ** 300), rtol=2 ** -8, atol=0)


def test_autocast_leaves_a_float64_module_alone():
    """autocast casts float32 only (nn.RNN's rule): a float64 module stays float64."""
    m = FusedWCRNN(3, 4, dtype=F64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h = m(torch.randn(5, 2, 3, dtype=F64))
    assert out.dtype == h.dtype == F64


def test_autocast_under_torch_compile():
    torch._dynamo.reset()
    torch.manual_seed(3)
    model = FusedWCRNN(3, 8, num_layers=2, r=0.99, gamma=0.3, learn_gamma=True)
    x = torch.randn(6, 2, 3)

    def step(m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, h = m(x)
        return out, h

    eager = step(model)
    out, h = step(torch.compile(model, fullgraph=True, backend="aot_eager"))
    assert out.dtype == h.dtype == torch.bfloat16
    torch.testing.assert_close(out, eager[0], rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["auto", "torch", "cuda", "triton"])
def test_autocast_cuda_behaves_as_nn_rnn(backend, dtype):
    if backend != "auto":
        require_backend(backend, device="cuda", dtype=torch.float32, hidden_size=16)
    torch.manual_seed(0)
    rnn = nn.RNN(5, 16, num_layers=2, bidirectional=True).cuda()
    model = FusedWCRNN.from_rnn(rnn, backend=backend)
    x = torch.randn(12, 3, 5, device="cuda")

    def run(m, amp):
        with torch.autocast("cuda", dtype=dtype, enabled=amp):
            out, h = m(x)
        loss = out.float().sum() + h.float().sum()
        return out, h, torch.autograd.grad(loss, list(m.parameters()))

    r_out, r_h, r_g = run(rnn, True)
    m_out, m_h, m_g = run(model, True)
    f_out, f_h, f_g = run(model, False)
    rf_out, rf_h, rf_g = run(rnn, False)
    assert (m_out.dtype, m_h.dtype) == (dtype, dtype)
    eps = 2 ** -8 if dtype == torch.bfloat16 else 2 ** -11
    if r_out.dtype == dtype:
        bound = max(max_rel_err(r_out, rf_out), eps)
    else:
        # cuDNN's RNN autocast casts to float16 whatever the autocast dtype (a bfloat16 request gives float16
        # outputs, 8x more precise): the yardstick is then an nn.RNN that runs in bfloat16, under CPU autocast
        # (a different implementation: within 2x of its error; ours was 0.75-0.93x of it on CPU, 5 seeds)
        assert dtype == torch.bfloat16 and r_out.dtype == torch.float16, r_out.dtype
        rnn_cpu, x_cpu = copy.deepcopy(rnn).cpu(), x.cpu()
        with torch.autocast("cpu", dtype=dtype):
            y_amp = rnn_cpu(x_cpu)[0]
        bound = max(2 * max_rel_err(y_amp.float(), rnn_cpu(x_cpu)[0]), eps)
    assert max_rel_err(m_out, f_out) <= bound
    for (name, p), g, gf, rg, rgf in zip(model.named_parameters(), m_g, f_g, r_g, rf_g):
        assert g.dtype == torch.float32, name
        assert max_rel_err(g, gf) <= max(2 * max_rel_err(rg, rgf), 4 * eps), name


# ------------------------------------------------------------------------------------ weights_only loading

def test_weights_only_load_of_a_pickled_model_needs_the_class_allowlisted_as_for_nn_rnn():
    """What docs/from_nn_rnn.md says: torch.load(weights_only=True) of a whole pickled model needs
    FusedWCRNN in safe_globals, exactly as it needs nn.RNN; state_dicts need nothing."""
    m = FusedWCRNN(3, 4, residual="rotational", r=0.99)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    with pytest.raises(Exception, match="FusedWCRNN"):
        torch.load(buf, weights_only=True)
    buf.seek(0)
    with torch.serialization.safe_globals([FusedWCRNN]):
        loaded = torch.load(buf, weights_only=True)
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(loaded(x)[0], m(x)[0], rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh = FusedWCRNN(3, 4, residual="rotational")
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(fresh(x)[0], m(x)[0], rtol=0, atol=0)


# ----------------------------------------------------------------------- "auto" without the compiled backend

FALLBACK = textwrap.dedent(r"""
    import warnings, torch
    from torch.utils import cpp_extension
    cpp_extension.is_ninja_available = lambda: False          # a machine without ninja
    from wcrnn_kernels import FusedWCRNN, _build
    _build._installed_library = lambda: None                   # and without an install-time build
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as w:
        m = FusedWCRNN(3, 4)
        m(torch.randn(5, 2, 3)); m(torch.randn(5, 2, 3))
        FusedWCRNN(3, 4, dtype=torch.float64)(torch.randn(5, 2, 3, dtype=torch.float64))
        FusedWCRNN(3, 4, backend="torch")(torch.randn(5, 2, 3))
    ours = [x for x in w if "wcrnn_kernels" in str(x.message)]
    print(len(ours))
    print(ours[0].filename if ours else "")
    print(str(ours[0].message) if ours else "")
""")


def _fallback_warnings(script, tmp_path):
    """(count, first message) of the package's warnings, from `script` run in a child process with an empty
    build cache (and, by the script, no ninja): the compiled backend cannot be built there. The first one must
    point at the script's line that called into the package (python -c: "<string>")."""
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(wcrnn_kernels.__file__)))
    env = dict(os.environ, WCRNN_CACHE_DIR=str(tmp_path / "empty_cache"),
               PYTHONPATH=os.pathsep.join([pkg_parent, os.environ.get("PYTHONPATH", "")]))
    env.pop("WCRNN_NO_BUILD", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, filename, msg = proc.stdout.strip().split("\n", 2)
    assert filename == "<string>", filename  # the warning points at the script's own line, not the package's
    return count, msg


def test_auto_warns_once_when_it_falls_back_from_the_compiled_backend(tmp_path):
    count, msg = _fallback_warnings(FALLBACK, tmp_path)
    assert count == "1", (count, msg)
    assert "backend='auto' runs CPU tensors on the 'torch' backend" in msg
    assert "`pip install ninja`" in msg and "backend='torch'" in msg


FALLBACK_OP = textwrap.dedent(r"""
    import warnings, torch
    from torch.utils import cpp_extension
    cpp_extension.is_ninja_available = lambda: False          # a machine without ninja
    from wcrnn_kernels import _build, wcrnn_chain
    _build._installed_library = lambda: None                   # and without an install-time build
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as w:
        for _ in range(2):
            wcrnn_chain(torch.randn(5, 2, 4), torch.zeros(2, 4), torch.eye(4), 0, torch.ones(4), 0.1)
    ours = [x for x in w if "wcrnn_kernels" in str(x.message)]
    print(len(ours))
    print(ours[0].filename if ours else "")
    print(str(ours[0].message) if ours else "")
""")


def test_auto_fallback_warning_reaches_direct_op_callers(tmp_path):
    """The same one warning for code that calls the op itself (it lives in the backend resolution)."""
    count, msg = _fallback_warnings(FALLBACK_OP, tmp_path)
    assert count == "1", (count, msg)
    assert "backend='auto' runs CPU tensors on the 'torch' backend" in msg


def test_no_fallback_warning_when_the_compiled_backend_runs():
    require_backend("cpp", dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FusedWCRNN(3, 4)(torch.randn(5, 2, 3))


FIRST_CALLS_AT_ONCE = textwrap.dedent(r"""
    import importlib.abc, sys, threading, time, torch
    class Slow(importlib.abc.MetaPathFinder):  # the compiled backend's module takes 0.5 s to import
        def find_spec(self, name, path, target=None):
            if name == "wcrnn_kernels.backends.cpp":
                time.sleep(0.5)
            return None
    sys.meta_path.insert(0, Slow())
    from wcrnn_kernels import FusedWCRNN
    from wcrnn_kernels.backends import _RESOLVED
    torch.manual_seed(0)
    m = FusedWCRNN(8, 16)
    x = torch.randn(20, 3, 8)
    out, errors = {}, []
    def work(i):
        try:
            with torch.no_grad():
                out[i] = m(x)[0]
        except Exception as e:
            errors.append(repr(e))
    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with torch.no_grad():
        ref = m(x)[0]
    print(errors, sum(not torch.equal(o, ref) for o in out.values()), len(out), sorted(set(_RESOLVED.values())))
""")


def test_first_calls_from_several_threads_at_once_wait_for_the_backends():
    """An inference server's threads whose first calls come at once (a client test found it): the threads that
    did not load the backends went on while the loading one was still importing them, and either failed with
    KeyError('torch') or resolved "auto" to "torch" ("cpp" not registered yet), another backend's rounding
    without a word. Here the cpp backend's module takes 0.5 s to import, so every thread's call comes while it
    loads: all of them must run on cpp, bitwise equal to a later call."""
    require_backend("cpp", dtype=torch.float32)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(wcrnn_kernels.__file__))), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", FIRST_CALLS_AT_ONCE], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[] 0 6 ['cpp']", proc.stdout


def _stub(name, available, supports=True):
    """A registry entry that reports `available` and runs (supports) any tensor or none; it never runs."""
    class Stub:
        def availability(self):
            return (True, "stub") if available else (False, f"{name} stub not built: make nvcc findable")

        def supports(self, device, dtype, hidden_size):
            return None if supports else "stub runs nothing"
    s = Stub()
    s.name = name
    return s


@pytest.mark.parametrize("cuda_ok,triton_ok,expect,warns", [
    (False, True, "triton", True), (False, False, "torch", True), (True, True, "cuda", False)])
def test_auto_warns_once_when_cuda_tensors_lose_the_compiled_cuda_backend(monkeypatch, cuda_ok, triton_ok, expect,
                                                                          warns):
    """The same warning on CUDA: without the compiled 'cuda' backend (no nvcc at install), 'auto' takes
    'triton' (up to 25x slower on an H200) or 'torch'; it says so once, naming the reason. Resolution only:
    no CUDA tensor is made, so this runs on any machine."""
    from wcrnn_kernels.backends import _registry
    _registry._ensure_loaded()
    monkeypatch.setattr(_registry, "_RESOLVED", {})
    monkeypatch.setattr(_registry, "_FALLBACK_WARNED", set())
    monkeypatch.setitem(_registry._REGISTRY, "cuda", _stub("cuda", cuda_ok))
    monkeypatch.setitem(_registry._REGISTRY, "triton", _stub("triton", True, supports=triton_ok))
    dev = torch.device("cuda")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert _registry.resolve_backend("auto", dev, torch.float32, 64) == expect
        assert _registry.resolve_backend("auto", dev, torch.bfloat16, 128) == expect  # another key: no repeat
    msgs = [str(x.message) for x in w if "wcrnn_kernels" in str(x.message)]
    if not warns:
        assert msgs == []
        return
    assert len(msgs) == 1, msgs
    assert f"backend='auto' runs CUDA tensors on the '{expect}' backend" in msgs[0]
    assert "compiled 'cuda' backend is not available here: cuda stub not built: make nvcc findable" in msgs[0]
    assert f"backend='{expect}'" in msgs[0]


# ------------------------------------------------------------------- torch.func, forward-mode AD, from_rnn mode

def _elman_pair(seed=20):
    torch.manual_seed(seed)
    rnn = nn.RNN(3, 5, num_layers=2).double()
    return rnn, FusedWCRNN.from_rnn(rnn)


@pytest.fixture
def reference_warning_reset(monkeypatch):
    from wcrnn_kernels import ops
    monkeypatch.setattr(ops, "_REFERENCE_WARNED", [])


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_torch_func_transforms_and_forward_ad_match_nn_rnn(backend, reference_warning_reset):
    """jvp (the tangent was silently 0 through the fused op), grad of functional_call (it raised), jacrev,
    vmap and forward-mode AD: the chain runs as the reference under them, and says so once per process."""
    import torch.autograd.forward_ad as fwAD
    rnn, _ = _elman_pair()
    model = FusedWCRNN.from_rnn(rnn, backend=backend)
    x = torch.randn(4, 2, 3, dtype=F64)
    v = torch.randn_like(x)
    with pytest.warns(UserWarning, match="torch.func transforms.*pure-PyTorch reference") as record:
        ours = torch.func.jvp(lambda xi: model(xi)[0], (x,), (v,))[1]
    mine = [w for w in record if "pure-PyTorch reference" in str(w.message)]
    assert len(mine) == 1 and mine[0].filename == __file__, [(w.filename, w.lineno) for w in mine]
    theirs = torch.func.jvp(lambda xi: rnn(xi)[0], (x,), (v,))[1]
    assert theirs.abs().max() > 1e-3 and max_rel_err(ours, theirs) < 1e-12
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per process: no second warning
        params = {n: p.detach() for n, p in rnn.named_parameters()}
        ours = torch.func.grad(lambda p: torch.func.functional_call(model, p, (x,))[0].sum())(params)
        theirs = torch.func.grad(lambda p: torch.func.functional_call(rnn, p, (x,))[0].sum())(params)
        for n in params:
            assert max_rel_err(ours[n], theirs[n]) < 1e-12, n
        ours = torch.func.jacrev(lambda xi: model(xi)[1])(x)
        assert max_rel_err(ours, torch.func.jacrev(lambda xi: rnn(xi)[1])(x)) < 1e-12
        xs = torch.randn(3, 4, 2, 3, dtype=F64)
        assert max_rel_err(torch.func.vmap(lambda xi: model(xi)[0])(xs),
                           torch.stack([rnn(xi)[0] for xi in xs])) < 1e-12
        with fwAD.dual_level():
            ours = fwAD.unpack_dual(model(fwAD.make_dual(x, v))[0]).tangent
        with fwAD.dual_level():
            theirs = fwAD.unpack_dual(rnn(fwAD.make_dual(x, v))[0]).tangent
        assert max_rel_err(ours, theirs) < 1e-12


def test_plain_calls_do_not_take_the_reference(reference_warning_reset, monkeypatch):
    # positive control of the routing: functional_call without a transform, and plain calls, stay fused
    from wcrnn_kernels import ops
    rnn, model = _elman_pair()
    calls = []
    real = ops.wcrnn_chain_ref
    monkeypatch.setattr(ops, "wcrnn_chain_ref", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(4, 2, 3, dtype=F64, requires_grad=True)
    model(x)[0].sum().backward()
    torch.func.functional_call(model, dict(model.named_parameters()), (x,))
    assert calls == [] and not ops._REFERENCE_WARNED
    torch.func.jvp(lambda xi: model(xi)[0], (x.detach(),), (torch.ones_like(x),))
    assert calls  # the control: a transform does reach it


def test_second_derivatives_through_torch_func_match_the_reference_backend():
    rnn, model = _elman_pair(21)
    x = torch.randn(3, 2, 3, dtype=F64)
    hess = torch.func.hessian(lambda xi: model(xi)[0].square().sum())(x)
    ref = FusedWCRNN.from_rnn(rnn, backend="reference")
    xr = x.clone().requires_grad_()
    g, = torch.autograd.grad(ref(xr)[0].square().sum(), xr, create_graph=True)
    v = torch.randn_like(x)
    hv, = torch.autograd.grad((g * v).sum(), xr)
    assert max_rel_err(torch.einsum("abcdef,def->abc", hess, v), hv) < 1e-10


def test_from_rnn_keeps_eval_mode_and_says_parametrizations_are_not_carried():
    from torch.nn.utils import parametrizations
    torch.manual_seed(22)
    rnn = nn.RNN(3, 5, num_layers=2, dropout=0.5).double().eval()
    model = FusedWCRNN.from_rnn(rnn)
    assert not model.training
    x = torch.randn(4, 2, 3, dtype=F64)
    assert max_rel_err(model(x)[0], rnn(x)[0]) < 1e-12  # dropout off, as in the eval-mode rnn
    assert FusedWCRNN.from_rnn(rnn.train()).training
    parametrizations.weight_norm(rnn, "weight_hh_l0")
    with pytest.warns(UserWarning, match="parametrizations on weight_hh_l0.*Register them again"):
        model = FusedWCRNN.from_rnn(rnn)
    assert max_rel_err(model.weight_hh_l0, rnn.weight_hh_l0) < 1e-15


def test_nn_rnn_internal_names_clients_read():
    torch.manual_seed(23)
    for cfg in (dict(), dict(num_layers=2, bidirectional=True, bias=False, nonlinearity="relu")):
        rnn = nn.RNN(3, 4, **cfg)
        model = FusedWCRNN.from_rnn(rnn)
        assert model._flat_weights_names == rnn._flat_weights_names
        assert model._all_weights == rnn._all_weights and model.mode == rnn.mode
        for n, w in zip(model._flat_weights_names, model._flat_weights):
            assert w is getattr(model, n) and torch.equal(w, getattr(rnn, n))


def test_meta_device_forward_gives_shapes_as_nn_rnn():
    model = FusedWCRNN(4, 6, num_layers=2, residual="none", gamma=1.0, device="meta")
    rnn = nn.RNN(4, 6, num_layers=2, device="meta")
    x = torch.randn(5, 3, 4, device="meta")
    for a, e in zip(model(x), rnn(x)):
        assert a.device.type == "meta" and a.shape == e.shape


def test_residual_none_without_a_gamma_warns_that_it_is_not_an_elman_rnn():
    with pytest.warns(UserWarning, match=r"residual='none'\) with the default gamma=0.01 is .* not an Elman RNN"):
        model = FusedWCRNN(3, 4, residual="none")
    assert float(model.gamma_l0) == pytest.approx(0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kw in (dict(gamma=0.01), dict(gamma=1.0), dict(gamma=torch.full((4,), 0.5))):
            FusedWCRNN(3, 4, residual="none", **kw)
        FusedWCRNN(3, 4)  # the weakly coupled default itself
        FusedWCRNN.from_rnn(nn.RNN(3, 4))
        FusedWCRNN.from_rnn(nn.RNN(3, 4), residual="none")


@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
def test_an_empty_batch_backpropagates_zero_gradients_as_nn_rnn(backend):
    # B = 0 (a filtered batch, an idle DDP rank): the outputs were fresh zeros outside the graph, so backward()
    # raised "element 0 of tensors does not require grad"; nn.RNN gives zero gradients
    torch.manual_seed(24)
    for cfg in (dict(), dict(num_layers=2, bidirectional=True, batch_first=True)):
        rnn = nn.RNN(3, 5, **cfg).double()
        model = FusedWCRNN.from_rnn(rnn, backend=backend)
        shape = (0, 4, 3) if cfg else (4, 0, 3)
        for m in (rnn, model):
            x = torch.zeros(shape, dtype=F64, requires_grad=True)
            h0 = torch.zeros(rnn.num_layers * (2 if rnn.bidirectional else 1), 0, 5, dtype=F64, requires_grad=True)
            out, h_n = m(x, h0)
            assert out.shape == rnn(x, h0)[0].shape and h_n.shape == h0.shape and h_n.grad_fn is not None
            (out.sum() + h_n.sum()).backward()
            assert x.grad.shape == shape and h0.grad.shape == h0.shape
            assert all(p.grad is not None and not p.grad.any() for p in m.parameters())


def test_a_module_built_on_meta_is_made_again_by_to_empty_and_reset_parameters():
    # the large-model recipe: r, gamma and theta kept uninitialised memory (reset_parameters reset the weights
    # only), and an op with a meta argument among CPU ones ran its fake: uninitialised outputs, no error
    kw = dict(num_layers=2, bidirectional=True, residual="rotational", r=0.95, gamma=0.1, learn_residual=True)
    torch.manual_seed(25)
    eager = FusedWCRNN(4, 8, **kw)
    with torch.device("meta"):
        model = FusedWCRNN(4, 8, **kw)
    model.to_empty(device="cpu")
    torch.manual_seed(25)
    model.reset_parameters()
    for name, value in eager.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    with torch.no_grad():
        model.r_l0.fill_(0.5)
    model.reset_parameters()  # learned values too, as nn.RNN's reset does
    assert torch.allclose(model.r_l0, torch.full_like(model.r_l0, 0.95))
    # an nn.RNN state_dict assigned into a meta module leaves gamma (which it lacks) on meta: a clear error
    rnn = nn.RNN(4, 8)
    with torch.device("meta"):
        elman = FusedWCRNN(4, 8, residual="none", gamma=1.0)
    elman.load_state_dict(rnn.state_dict(), assign=True)
    with pytest.raises(RuntimeError, match="gamma is on meta but u is on cpu.*materialise it"):
        elman(torch.randn(5, 2, 4))


def test_residual_and_coupling_tensors_take_the_weights_dtype():
    # a float64 gamma (numpy) beside float32 weights: accepted, then the forward failed in the compiled op
    import numpy as np
    model = FusedWCRNN(4, 16, residual="diagonal", r=torch.linspace(0.9, 1.0, 16, dtype=F64),
                       gamma=torch.from_numpy(np.full(16, 0.05)), learn_gamma=True)
    assert model.gamma_l0.dtype == model.r_l0.dtype == model.weight_hh_l0.dtype == torch.float32
    out, _ = model(torch.randn(3, 2, 4))
    out.sum().backward()
    assert model.gamma_l0.grad.dtype == torch.float32
    model = FusedWCRNN(4, 6, residual="rotational", theta=torch.zeros(3, dtype=F64), dtype=F64)
    assert model.theta_l0.dtype == F64
