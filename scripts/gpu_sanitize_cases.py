"""Small forward + backward cases for compute-sanitizer (tier 2 of scripts/gpu_check.sh).

    compute-sanitizer --tool memcheck python scripts/gpu_sanitize_cases.py --backends cuda --dtypes float32,...
    python scripts/gpu_sanitize_cases.py --dry-run     # CPU: the same list through the CUDA emulator

Each case runs the fused op forward and backward once, on CUDA: for the "cuda" backend the cases of
tests/sanitize_cases.py's ``cuda_cases`` (the same list the AddressSanitizer run of the CUDA kernels on the CPU
emulator uses: every path, forced tile heights and one row group, every canonical residual form, with and
without lengths, both nonlinearities, small awkward sizes); for "triton" one resident and one streamed size per
residual form. A plan the planner refuses as sanitize_cases.cuda_path_refused predicts (the block path where W_hh
does not fit one block's shared memory, the register path past its sizes) is printed as "refused" and skipped:
it is the planner's correct answer, not a finding.
Any other exception fails the run (exit status 1). The sanitizer's own report decides the rest.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "scripts"), os.path.join(REPO, "tests")]
if "--dry-run" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from sanitize_cases import cuda_cases, cuda_path_refused  # noqa: E402  (tests/: one case list for both sanitizers)
from wcrnn_kernels import canonical_residual, wcrnn_chain  # noqa: E402

TRITON_SIZES = ((3, 5, 48, True), (2, 3, 600, True))  # (T, B, H, lengths): resident / streamed in every dtype
TRITON_KINDS = ("scalar", "rotational", "dense")


def one(backend, device, kind, dtype, T, B, H, lengths, seed, nonlin=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    theta = torch.rand(H // 2, generator=g, dtype=torch.float64) if kind == "rotational" else None
    res_kind, res = canonical_residual(kind, H, 0.9, theta, dtype=dtype, device=device)
    u = rnd(T, B, H).requires_grad_(True)
    x0 = rnd(B, H).requires_grad_(True)
    w = rnd(H, H, scale=H ** -0.5).requires_grad_(True)
    res = res.detach().requires_grad_(True)
    gamma = rnd(H).abs().requires_grad_(True)
    L = torch.tensor(([T, 0] + [T - 1] * B)[:B], device=device) if lengths else None
    out, hn = wcrnn_chain(u, x0, w, res_kind, res, gamma, L, ("tanh", "relu")[nonlin], backend)
    (out.float().square().sum() + hn.float().sum()).backward()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="cuda")
    ap.add_argument("--dtypes", default="float32,bfloat16,float64")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    ran = refused = 0
    seed = 0
    for backend in args.backends.split(","):
        name = backend
        if args.dry_run and backend == "cuda":
            from gpu_smoke import setup_backend
            name = setup_backend("cuda", True)[0]
        if backend == "cuda":
            cases = list(cuda_cases(dtypes))
        else:
            cases = [(None, dt, kind, T, B, H, lengths, 0)
                     for kind in TRITON_KINDS for dt in dtypes for T, B, H, lengths in TRITON_SIZES]
        for plan, dt, kind, T, B, H, lengths, nonlin in cases:
            if plan is not None:
                path, rows, groups = plan
                os.environ.update(WCRNN_CUDA_PATH=path, WCRNN_CUDA_ROWS=rows, WCRNN_CUDA_ROW_GROUPS=groups)
            seed += 1
            label = (f"{backend} {'/'.join(plan) if plan else '-'} {kind} {dt} T={T} B={B} H={H} lengths={lengths} "
                     f"nonlin={nonlin}")
            try:
                one(name, device, kind, getattr(torch, dt), T, B, H, lengths, seed, nonlin)
                ran += 1
            except RuntimeError as e:
                refusal = plan is not None and cuda_path_refused(plan[0], kind, H, dt)
                if not refusal or not re.search(refusal, str(e)):
                    raise
                refused += 1
                print(f"refused (planner): {label}: {str(e).splitlines()[0][:160]}", flush=True)
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"sanitizer cases done: {ran} ran, {refused} refused by the planner", flush=True)


if __name__ == "__main__":
    main()
