#!/usr/bin/env bash
# The one command a GPU session runs for the CUDA backend (csrc/cuda/, wcrnn_kernels/backends/cuda.py):
#
#   scripts/gpu_check.sh                 # every stage: info build test sanitize bench suite
#   scripts/gpu_check.sh info build test # only some stages; where one command may run 10 minutes at most,
#   scripts/gpu_check.sh sanitize bench  # run them in these three groups (the build is cached in between)
#   scripts/gpu_check.sh suite
#
# Stages
#   info      the device, driver, torch, nvcc, compute-sanitizer
#   build     compiles the wcrnn_C library with the CUDA kernels (JIT, cached under build/wcrnn_cache, an
#             ignored folder, so later stages and later calls reuse it) and fails unless available_backends()
#             reports "cuda" as available
#   test      tests/test_cuda.py (WCRNN_REQUIRE_CUDA=1: a missing GPU or build fails instead of skipping)
#   sanitize  compute-sanitizer memcheck, racecheck and synccheck on small cases: both paths (block, grid),
#             every residual form, lengths, forward and backward, float32 / float64 / bfloat16
#   bench     benchmarks/ on CUDA for float32 and bfloat16 (S1-S4, G4 beside nn.RNN/cuDNN, Triton, the
#             reference and the GEMM floor), JSON to benchmarks/results/, and a table of the cuda/cuDNN ratios
#   suite     the rest of tests/ on this machine (the generic suites pick up CUDA where they have GPU cases)
#
# Everything is logged to benchmarks/results/gpu_check_<stage>.log. Exit status: non-zero if any stage failed
# (later stages still run). Environment: WCRNN_CUDA_ARCH (default: this GPU's architecture, which keeps the
# build short; the package default is "8.0;9.0+PTX"), PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
RESULTS=$REPO/benchmarks/results
mkdir -p "$RESULTS"
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export WCRNN_CACHE_DIR=${WCRNN_CACHE_DIR:-$REPO/build/wcrnn_cache}
export PYTHONUNBUFFERED=1

STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(info build test sanitize bench suite)
FAILED=()

if [ -z "${WCRNN_CUDA_ARCH:-}" ]; then
    WCRNN_CUDA_ARCH=$($PY -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')" 2>/dev/null)
    export WCRNN_CUDA_ARCH=${WCRNN_CUDA_ARCH:-8.0;9.0}
fi

find_sanitizer() {
    for c in "$(command -v compute-sanitizer 2>/dev/null)" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
             /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
        [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
    done
    return 1
}

stage_info() {
    nvidia-smi || true
    command -v nvcc && nvcc --version || echo "nvcc not on PATH (CUDA_HOME=${CUDA_HOME:-unset})"
    find_sanitizer || echo "compute-sanitizer not found"
    $PY - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"device {i}: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.1f} GiB")
EOF
}

stage_build() {
    echo "WCRNN_CUDA_ARCH=$WCRNN_CUDA_ARCH WCRNN_CACHE_DIR=$WCRNN_CACHE_DIR"
    $PY - <<'EOF'
import json, sys, time
t0 = time.time()
from wcrnn_kernels import _build, available_backends
info = _build.extension_info()
print(json.dumps(info, indent=1, default=str))
report = available_backends()
print(json.dumps(report, indent=1))
print(f"build/load took {time.time() - t0:.0f} s")
if not info.get("cuda_kernels") or not report["cuda"]["available"]:
    sys.exit("the CUDA kernels are not available: " + report["cuda"]["reason"])
EOF
}

stage_test() {
    WCRNN_REQUIRE_CUDA=1 $PY -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider --durations=10
}

stage_suite() {
    $PY -m pytest tests -q -rs -p no:cacheprovider --ignore=tests/test_cuda.py
}

SANITIZE_CASES=$(cat <<'EOF'
# Small cases for compute-sanitizer: each one a forward and a backward through the fused op.
import os, torch
from wcrnn_kernels import canonical_residual, wcrnn_chain
torch.manual_seed(0)
dev = "cuda"
for path in ("block", "grid", "grid-1group"):  # the last: one row group, so blocks walk several chunks
    os.environ["WCRNN_CUDA_PATH"] = "block" if path == "block" else "grid"
    os.environ["WCRNN_CUDA_ROW_GROUPS"] = "1" if path == "grid-1group" else ""
    for kind in ("scalar", "rotational", "dense"):
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            for T, B, H, lengths in ((3, 3, 18, True), (2, 11, 34, True), (2, 2, 130, False)):
                res_kind, res = canonical_residual(kind, H, 0.9, torch.rand(H // 2) if kind == "rotational" else None,
                                                   dtype=dtype, device=dev)
                u = torch.randn(T, B, H, device=dev, dtype=dtype, requires_grad=True)
                x0 = torch.randn(B, H, device=dev, dtype=dtype, requires_grad=True)
                w = (torch.randn(H, H, device=dev, dtype=dtype) / H ** 0.5).requires_grad_(True)
                res = res.detach().requires_grad_(True)
                gamma = torch.rand(H, device=dev, dtype=dtype, requires_grad=True)
                L = torch.tensor([T] + [0] + [T - 1] * (B - 2), device=dev) if lengths else None
                out, hn = wcrnn_chain(u, x0, w, res_kind, res, gamma, L, "tanh", "cuda")
                (out.float().square().sum() + hn.float().sum()).backward()
torch.cuda.synchronize()
print("sanitizer cases done")
EOF
)

stage_sanitize() {
    local san rc=0 filter=()
    san=$(find_sanitizer) || { echo "compute-sanitizer not found (CUDA toolkit bin/ on PATH?)"; return 1; }
    # Only our kernels are instrumented (faster, and no reports from library kernels); the option's name
    # changed across sanitizer versions.
    if "$san" --help 2>&1 | grep -q -- "--kernel-name "; then
        filter=(--kernel-name kns=chain_)
    elif "$san" --help 2>&1 | grep -q -- "--filter "; then
        filter=(--filter kns=chain_)
    fi
    local case_file
    case_file=$(mktemp --suffix=.py)
    echo "$SANITIZE_CASES" > "$case_file"
    # Every tensor its own cudaMalloc, so memcheck sees an access past a tensor's end.
    export PYTORCH_NO_CUDA_MEMORY_CACHING=1
    for tool in memcheck racecheck synccheck; do
        echo "== compute-sanitizer --tool $tool"
        "$san" --tool "$tool" "${filter[@]}" --error-exitcode 1 $PY "$case_file" || { echo "$tool: FAILED"; rc=1; }
    done
    unset PYTORCH_NO_CUDA_MEMORY_CACHING
    rm -f "$case_file"
    return $rc
}

stage_bench() {
    local rc=0 dev
    dev=$($PY -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
    for dtype in float32 bfloat16; do
        WCRNN_BENCH_DEVICE=cuda WCRNN_BENCH_DTYPE=$dtype $PY -m pytest benchmarks/test_bench_wcrnn.py \
            --benchmark-only -q -p no:cacheprovider \
            --benchmark-json="$RESULTS/gpu_${dev}_${dtype}.json" || rc=1
    done
    $PY - "$RESULTS" "$dev" <<'EOF'
import json, os, sys
results, dev = sys.argv[1], sys.argv[2]
for dtype in ("float32", "bfloat16"):
    path = os.path.join(results, f"gpu_{dev}_{dtype}.json")
    if not os.path.exists(path):
        continue
    rows = {}
    for b in json.load(open(path))["benchmarks"]:
        e = b["extra_info"]
        rows[(e["shape"], e["mode"], e["impl"])] = b["stats"]["mean"]
    print(f"\n{dev} {dtype}: mean ms per call; ratio = nn.RNN (cuDNN) time / cuda time (>1: cuda faster)")
    print(f"{'shape':6} {'mode':17} {'cuda':>9} {'nn.RNN':>9} {'triton':>9} {'ratio':>6} {'us/step':>8}")
    for (shape, mode, impl), t in sorted(rows.items()):
        if impl != "cuda":
            continue
        base = rows.get((shape, mode, "nn.RNN"))
        tri = rows.get((shape, mode, "triton"))
        T = {"S1": 784, "S2": 1024, "S3": 1024, "S4": 100, "G4": 4096}.get(shape, 1)
        print(f"{shape:6} {mode:17} {t * 1e3:9.3f} {base * 1e3 if base else float('nan'):9.3f} "
              f"{tri * 1e3 if tri else float('nan'):9.3f} {base / t if base else float('nan'):6.2f} "
              f"{t / T * 1e6:8.2f}")
EOF
    return $rc
}

for s in "${STAGES[@]}"; do
    case "$s" in
        info|build|test|sanitize|bench|suite) ;;
        *) echo "unknown stage '$s' (expected info, build, test, sanitize, bench, suite)"; exit 2 ;;
    esac
    echo "==================== $s"
    log="$RESULTS/gpu_check_$s.log"
    start=$(date +%s)
    "stage_$s" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    echo "== $s: exit $status in $(( $(date +%s) - start )) s (log: $log)" | tee -a "$log"
    [ "$status" -ne 0 ] && FAILED+=("$s")
    if [ "$s" = build ] && [ "$status" -ne 0 ]; then
        echo "build failed: skipping the remaining stages"
        break
    fi
done

if [ ${#FAILED[@]} -ne 0 ]; then
    echo "gpu_check: FAILED stages: ${FAILED[*]}"
    exit 1
fi
echo "gpu_check: all stages passed: ${STAGES[*]}"
