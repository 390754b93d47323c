"""Where the host time of one FusedWCRNN call goes, layer by layer, on CPU (the step-by-step benchmark's
question: `test_step_by_step` in test_bench_wcrnn.py measures the whole call against nn.RNN).

    python benchmarks/bench_call_cost.py [--threads 1] [--rounds 25] [--residual scalar]

Microseconds per call (no grad, float32). Every column of a shape runs 300 calls per round, the columns one
after another, for --rounds rounds; each column's median round is printed. This 2-core VM is shared, and short
quiet spells (a call then takes half as long, nn.RNN's too) come and go within a second: interleaved rounds let
every column meet the same conditions, and the median is the usual one (a best round would be a quiet spell
that some columns happen to catch and others not).
  kernel T=1,2,8   the C++ op torch.ops.wcrnn_C.chain_fwd alone (a scalar residual and coupling, 0-d, as the
                   module passes them); T=1 minus the per-step increase is its fixed cost (the call through
                   torch.ops, the outputs' allocation, and packing W_hh once per call)
  impl             the op's implementation (backend resolution + the C++ op): what the eager fast path calls
  custom op        the same through the torch.library custom op's dispatch (what traced graphs call)
  wcrnn_chain      the public op: argument checks, then the fast path
  module           a whole FusedWCRNN(I, H, residual=--residual) call with a state, T = 1
  prepared         the same call with the layer's weights prepared once beforehand (parameter lookups, bias
                   sum, residual and coupling in canonical form): what that per-call preparation costs (a
                   diagnostic: the module prepares them at every call, as it must to see any change to its
                   parameters)
  module ops       the torch ops such a call cannot do without, in a row without the module's Python: bias sum,
                   input projection, the C++ op (given the layer's canonical residual and coupling as the module
                   gives them: 0-d for a scalar r and gamma), h_n
  nn.RNN           nn.RNN(I, H) with a state, T = 1
  impl after Py    impl again, each call right after about 5 us of pure-Python work (that work's own time
                   taken off): what the interpreter running between two calls costs the next one
  module f+b       a training step of `module` at T = 1 with grad on: the call with the input requiring grad,
                   then backward of out.sum() + h_n.sum() (the autograd graph, the backward op and the parameter
                   gradients: host time that a GPU step at small T cannot hide either)
  nn.RNN f+b       the same for nn.RNN
"""
import argparse
import statistics
import time

import torch

from wcrnn_kernels import FusedWCRNN, ops, wcrnn_chain
from wcrnn_kernels.backends import get_backend
from wcrnn_kernels.residual import RESIDUAL_KINDS

COLUMNS = ("kernel T=1", "T=2", "T=8", "impl", "custom op", "wcrnn_chain", "module", "prepared", "module ops",
           "nn.RNN", "impl after Py", "module f+b", "nn.RNN f+b")


def median_rounds(fns, rounds, calls=300):
    """{name: median microseconds per call over `rounds` interleaved rounds of `calls` calls}."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        for _ in range(50):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - t0) / calls * 1e6)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _python_work():
    s = 0
    for i in range(300):
        s += i
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--shapes", default="1x128,32x128,32x256,1x512", help="BxH, comma-separated")
    ap.add_argument("--residual", default="scalar", choices=RESIDUAL_KINDS,
                    help="the modules' residual kind (the kernel columns always run the scalar form)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ok, why = get_backend("cpp").availability()
    if not ok:
        raise SystemExit(f"the cpp backend is not available: {why}")
    I = 32
    print(f"torch {torch.__version__}, {args.threads} thread(s), float32, residual={args.residual!r}, "
          f"microseconds per call (median of {args.rounds} interleaved rounds)")
    print(f"{'B':>4} {'H':>4} " + " ".join(f"{c:>{max(len(c), 7)}}" for c in COLUMNS))
    torch.manual_seed(0)
    for shape in args.shapes.split(","):
        B, H = (int(v) for v in shape.split("x"))
        x0 = torch.zeros(B, H)
        w = torch.randn(H, H) / H ** 0.5
        res, gamma = torch.tensor(0.9), torch.tensor(0.1)  # 0-d, as the module passes a scalar r and gamma
        us = {T: torch.randn(T, B, H) for T in (1, 2, 8)}
        args_op = (us[1], x0, w, res, gamma, None, 0, 0, "auto", False)
        kind = {"residual": args.residual}
        m, r = FusedWCRNN(I, H, **kind), torch.nn.RNN(I, H)
        x, h = torch.randn(1, B, I), torch.zeros(1, B, H)
        prepared = FusedWCRNN(I, H, **kind)
        prepared.load_state_dict(m.state_dict())
        cws = prepared._chain_weights(0, 0, True)
        prepared._chain_weights = lambda layer, d, for_kernels=False: cws  # instance attribute: this copy only
        wih, whh, bih, bhh = m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0
        rk, r0, g0 = cws.res_kind, cws.res, cws.gamma  # the canonical residual and coupling (0-d when scalar)

        def module_ops():
            b = bih + bhh
            uu = torch.nn.functional.linear(x, wih, b)
            _, hn, _ = torch.ops.wcrnn_C.chain_fwd(uu, h[0], whh, r0, g0, None, rk, 0, False)
            return torch.stack([hn])

        def kernel(T):
            return lambda: torch.ops.wcrnn_C.chain_fwd(us[T], x0, w, res, gamma, None, 0, 0, False)

        fns = dict(zip(COLUMNS, (
            kernel(1), kernel(2), kernel(8),
            lambda: ops._chain_fwd_impl(*args_op),
            lambda: ops._chain_fwd(*args_op),
            lambda: wcrnn_chain(us[1], x0, w, 0, res, gamma),
            lambda: m(x, h), lambda: prepared(x, h), module_ops, lambda: r(x, h),
            lambda: (_python_work(), ops._chain_fwd_impl(*args_op)))))
        fns["python"] = _python_work
        with torch.no_grad():
            best = median_rounds(fns, args.rounds)
        best["impl after Py"] -= best.pop("python")
        xg = x.clone().requires_grad_()

        def train_step(model):
            def step():
                out, hn = model(xg, h)
                (out.sum() + hn.sum()).backward()
            return step

        best.update(median_rounds({"module f+b": train_step(m), "nn.RNN f+b": train_step(r)}, args.rounds, 100))
        print(f"{B:>4} {H:>4} " + " ".join(f"{best[c]:>{max(len(c), 7)}.1f}" for c in COLUMNS))


if __name__ == "__main__":
    main()
