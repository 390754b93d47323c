"""Bad input gets a clear error that names the argument and what was expected."""
from __future__ import annotations

import pytest
import torch

from wcrnn_kernels import FusedWCRNN, RES_DIAG, RES_ROT, wcrnn_chain
from wcrnn_kernels.backends import _REGISTRY, _RESOLVED, BackendUnavailableError, register_backend
from wcrnn_kernels.backends.pytorch import TorchBackend


def chain_args(T=3, B=2, H=4, dtype=torch.float32):
    return dict(u=torch.randn(T, B, H, dtype=dtype), x0=torch.zeros(B, H, dtype=dtype),
                w_hh=torch.eye(H, dtype=dtype), res_kind=RES_DIAG, res=torch.ones(H, dtype=dtype),
                gamma=torch.full((H,), 0.1, dtype=dtype))


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(input_size=3, hidden_size=0), ValueError, "hidden_size: expected an integer >= 1"),
    (dict(input_size=3, hidden_size=16.0), TypeError, "hidden_size: expected an integer >= 1, got float 16.0"),
    (dict(input_size="3", hidden_size=4), TypeError, "input_size: expected an integer >= 1, got str"),
    (dict(input_size=3, hidden_size=4, proj_size=2), ValueError, "proj_size: only supported for LSTM"),
    (dict(input_size=3, hidden_size=4, proj_size=0), ValueError, "proj_size: only supported for LSTM"),
    (dict(input_size=3, hidden_size=4, gamma="0.01"), TypeError, "gamma: expected a number or a tensor, got str"),
    (dict(input_size=3, hidden_size=4, r="1"), TypeError, "r: expected a number or a tensor, got str"),
    (dict(input_size=3, hidden_size=4, num_layers=0), ValueError, "num_layers"),
    (dict(input_size=3, hidden_size=4, nonlinearity="sigmoid"), ValueError, "nonlinearity: expected 'tanh' or 'relu'"),
    (dict(input_size=3, hidden_size=4, residual="spiral"), ValueError, "residual: expected one of"),
    (dict(input_size=3, hidden_size=5, residual="rotational"), ValueError, "even hidden_size, got 5"),
    (dict(input_size=3, hidden_size=4, residual="diagonal", r=torch.ones(3)), ValueError,
     r"r: residual='diagonal' with hidden_size=4 expects .* shape \(4,\), got .*\(3,\)"),
    (dict(input_size=3, hidden_size=4, residual="dense", r=torch.ones(4)), ValueError, r"shape \(4, 4\)"),
    (dict(input_size=3, hidden_size=4, residual="rotational", theta=torch.ones(3)), ValueError,
     r"theta: expected a tensor of shape \(2,\)"),
    (dict(input_size=3, hidden_size=4, residual="scalar", theta=torch.ones(2)), ValueError,
     "theta: only used by residual='rotational'"),
    (dict(input_size=3, hidden_size=4, gamma=torch.ones(3)), ValueError, r"gamma: expected .* \(4,\)"),
    (dict(input_size=3, hidden_size=4, dropout=1.5), ValueError, "dropout"),
    (dict(input_size=3, hidden_size=4, backend="fortran"), ValueError, "backend: expected 'auto' or one of"),
    (dict(input_size=0, hidden_size=4), ValueError, "input_size: expected an integer >= 1, got 0"),
    (dict(input_size=3, hidden_size=4, batch_first="False"), TypeError, "batch_first: expected a bool, got str"),
    (dict(input_size=3, hidden_size=4, bias="False"), TypeError, "bias: expected a bool, got str 'False'"),
    (dict(input_size=3, hidden_size=4, bidirectional="True"), TypeError, "bidirectional: expected a bool, got str"),
])
def test_constructor_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        FusedWCRNN(**kwargs)


def test_forward_errors():
    m = FusedWCRNN(3, 4, num_layers=2)
    with pytest.raises(ValueError, match="input: expected a 2-D .* or 3-D tensor, got 4-D"):
        m(torch.zeros(2, 2, 2, 3))
    with pytest.raises(ValueError, match=r"input: expected input.size\(-1\) == input_size = 3, got 5"):
        m(torch.zeros(2, 2, 5))
    with pytest.raises(ValueError, match=r"hx: expected shape \(2, 2, 4\), got \(1, 2, 4\)"):
        m(torch.zeros(3, 2, 3), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="hx: for unbatched 2-D input, hx should also be 2-D"):
        m(torch.zeros(3, 3), torch.zeros(2, 1, 4))
    with pytest.raises(ValueError, match="hx: for batched 3-D input, hx should also be 3-D"):
        m(torch.zeros(3, 2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"input: dtype torch.float64 does not match .*torch.float32.*"
                                         r"or the model with model.to\(torch.float64\)"):
        m(torch.zeros(3, 2, 3, dtype=torch.float64))
    # an integer input: the fix is the input's conversion alone (model.to(torch.int64) cannot convert a model)
    with pytest.raises(ValueError, match=r"input: dtype torch.int64 does not match .*input.to\(torch.float32\)$"):
        m(torch.zeros(3, 2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="hx: dtype torch.float64 does not match the input's dtype"):
        m(torch.zeros(3, 2, 3), torch.zeros(2, 2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="input: expected a tensor or a PackedSequence"):
        m([[1.0, 2.0, 3.0]])


def test_sequence_length_zero_is_rejected_like_nn_rnn():
    rnn = torch.nn.RNN(3, 4)
    with pytest.raises(RuntimeError, match="sequence length to be larger than 0") as e_rnn:
        rnn(torch.zeros(0, 2, 3))
    with pytest.raises(RuntimeError, match="sequence length to be larger than 0"):
        FusedWCRNN(3, 4)(torch.zeros(0, 2, 3))
    with pytest.raises(RuntimeError, match="sequence length to be larger than 0"):
        FusedWCRNN(3, 4)(torch.zeros(0, 3))
    assert e_rnn.type is RuntimeError


@pytest.mark.parametrize("field,value,match", [
    ("u", torch.zeros(3, 4), r"u: expected a 3-D tensor \(T, B, H\)"),
    ("u", torch.zeros(3, 2, 4, dtype=torch.int32), "u: expected a floating-point tensor"),
    ("x0", torch.zeros(3, 4), r"x0: expected shape \(B, H\) = \(2, 4\)"),
    ("w_hh", torch.zeros(4, 5), r"w_hh: expected shape \(H, H\) = \(4, 4\)"),
    ("res", torch.ones(5), r"res: expected shape \(4,\) or \(\) for res_kind 0 \(diagonal\), got \(5,\)"),
    ("res_kind", 7, "res_kind: expected 0"),
    ("gamma", torch.ones(3), r"gamma: expected a number or a tensor of shape \(\) or \(4,\)"),
    ("x0", torch.zeros(2, 4, dtype=torch.float64), "x0: dtype torch.float64 does not match u's dtype"),
    ("w_hh", torch.zeros(4, 4, device="meta"), "w_hh: device meta does not match u's device cpu"),
])
def test_chain_argument_errors(field, value, match):
    args = chain_args()
    args[field] = value
    with pytest.raises((ValueError, TypeError), match=match):
        wcrnn_chain(**args)


def test_chain_other_errors():
    args = chain_args()
    with pytest.raises(ValueError, match="nonlinearity: expected 'tanh' or 'relu'"):
        wcrnn_chain(**args, nonlinearity="gelu")
    with pytest.raises(ValueError, match=r"lengths: every entry must lie in \[0, T = 3\], got min 0, max 4"):
        wcrnn_chain(**args, lengths=torch.tensor([4, 0]))
    with pytest.raises(ValueError, match="lengths: expected a 1-D tensor of B = 2 entries"):
        wcrnn_chain(**args, lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="lengths: expected an integer tensor"):
        wcrnn_chain(**args, lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="backend: expected 'auto' or one of"):
        wcrnn_chain(**args, backend="fortran")
    with pytest.raises(TypeError, match="lengths: expected an integer tensor or sequence of B = 2 entries, got str"):
        wcrnn_chain(**args, lengths="523")
    for gamma in ("abc", "0.1", None, True):  # float("0.1") passed, float("abc") named no argument
        with pytest.raises(TypeError, match="gamma: expected a number or a tensor, got"):
            wcrnn_chain(**{**args, "gamma": gamma})
    args.update(res_kind=RES_ROT, res=torch.ones(2, 3), u=torch.zeros(3, 2, 3), x0=torch.zeros(2, 3),
                w_hh=torch.eye(3), gamma=torch.ones(3))
    with pytest.raises(ValueError, match="res: rotation pairs need an even hidden size, got H = 3"):
        wcrnn_chain(**args)
    with pytest.raises(RuntimeError, match="sequence length to be larger than 0"):
        wcrnn_chain(**chain_args(T=0))


class _MissingBackend(TorchBackend):
    """The torch backend, reported as not built."""
    name = "missing-for-test"

    def availability(self):
        return False, "not compiled; install a compiler and run `pip install --no-build-isolation .`"


class _PickyBackend(TorchBackend):
    """The torch backend, refusing H > 8."""
    name = "picky-for-test"

    def supports(self, device, dtype, hidden_size):
        return None if hidden_size <= 8 else f"H = {hidden_size} > 8; use backend='torch'"


def test_named_backend_that_cannot_run_says_why_and_how():
    register_backend(_MissingBackend())
    register_backend(_PickyBackend())
    try:
        with pytest.raises(BackendUnavailableError, match="not available here: not compiled; install a compiler"):
            wcrnn_chain(**chain_args(), backend="missing-for-test")
        with pytest.raises(BackendUnavailableError, match="not available here"):
            FusedWCRNN(3, 4, backend="missing-for-test")
        with pytest.raises(BackendUnavailableError, match=r"cannot run these tensors: H = 16 > 8; use backend='torch'"):
            wcrnn_chain(**chain_args(H=16), backend="picky-for-test")
        out, _ = wcrnn_chain(**chain_args(), backend="torch")
        assert out.shape == (3, 2, 4)
    finally:
        _REGISTRY.pop("missing-for-test")
        _REGISTRY.pop("picky-for-test")
        _RESOLVED.clear()


def test_available_backends_reports_every_backend_with_a_reason():
    from wcrnn_kernels import available_backends
    report = available_backends()
    assert {"reference", "torch"} <= set(report)
    assert report["torch"]["available"] and report["reference"]["available"]
    for name, info in report.items():
        assert isinstance(info["available"], bool) and isinstance(info["reason"], str) and info["reason"], name


@pytest.mark.parametrize("field,value", [
    ("res", torch.ones(5)), ("res_kind", 7), ("x0", torch.zeros(2, 4, dtype=torch.float64)), ("x0", torch.zeros(3, 4)),
    ("w_hh", torch.zeros(4, 4, device="meta")), ("res", torch.ones(2, 4)),
])
def test_public_op_and_kernel_launchers_say_the_same(field, value):
    """One contract, one wording (contract.py): the public op and the launchers' check (the Triton
    launchers call it) reject the same bad argument with the same message."""
    from wcrnn_kernels.contract import check_kernel_fwd
    args = chain_args()
    args[field] = value
    with pytest.raises((ValueError, TypeError)) as public:
        wcrnn_chain(**args)
    with pytest.raises((ValueError, TypeError)) as kernel:
        check_kernel_fwd(args["u"], args["x0"], args["w_hh"], args["res_kind"], args["res"], args["gamma"], None, 0)
    assert str(public.value) == str(kernel.value)
