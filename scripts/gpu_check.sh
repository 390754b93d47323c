#!/usr/bin/env bash
# The one entry point of a GPU session (one H200 lent for 15 minutes of device time, 10 minutes a command):
#
#   scripts/gpu_check.sh              tiers 1 and 2 in one command; ends within WCRNN_GPU_LIMIT_S (530 s)
#   scripts/gpu_check.sh 3            tier 3, a second command, only if tier 1 was clean and >= 6.5 min remain
#   scripts/gpu_check.sh --dry-run    the same steps on this CPU machine (CI runs it: tests/test_gpu_check.py)
#
# Tier 1 (about 4 minutes): the environment (SMs, shared-memory opt-in, cooperative launch, versions); the
#   build of the CUDA kernels, started first in the background while the Triton smoke and the compiles of the
#   Triton benchmark variants run beside it; the correctness smoke of both GPU backends against the float64
#   reference (scripts/gpu_smoke.py: every CUDA path, every residual form, tanh and relu, float64 at 1e-10,
#   float32 and bfloat16 within the reference's own error, H up to 1024, a 2048-step grid-path run repeated
#   and compared bit for bit); one benchmark line per (nn.RNN/cuDNN, cuda, triton, GEMM floor) x (forward,
#   forward+backward) x (float32, bfloat16) x (S1-S4, G4) with microseconds per step (scripts/gpu_bench.py),
#   and in float32 nn.RNN without TF32 and Triton at "high" / "medium" matmul precision (is the gap TF32?);
#   the CUDA paths that "auto" passes over (cuda:block, cuda:grid, and the opt-in tiled register path
#   cuda:tiled) at S1-S4, against "auto"'s (the register path there in float32 and bfloat16: is it still the
#   fastest?); right after tier 1, before tier 2, Nsight Compute on the kernels of the register path and the
#   tiled register path at S1 (scripts/gpu_profile.py; its report goes to full.log, key lines to
#   summary.txt): where the register path's step goes is the open question of the float32 gap to
#   cuDNN, and run 4's tier 2 left it no time (tier 2, clean in runs 3 and 4, takes what is left); before it, the
#   timeline of one call kernel by kernel at S1 and S4 (scripts/gpu_trace.py, torch.profiler: trace lines in
#   summary.txt), for the per-call part of that gap.
# Tier 2 (about 3 minutes): compute-sanitizer memcheck over every CUDA path x residual forms x dtypes and a
#   few Triton launches; racecheck and synccheck on float32 cases (scripts/gpu_sanitize_cases.py). A plan the
#   planner refuses is recorded and skipped, never fatal.
# Tier 3: the pytest-benchmark harness (autotuned Triton, float32 and bfloat16, JSON with device, versions
#   and commit), then the GPU test files with a per-test timeout, as far as the time allows.
#
# Every step runs under `timeout`, bounded by what is left of WCRNN_GPU_LIMIT_S, and appends its results as
# it goes. Files, in $OUT when set (the device tool's folder), else benchmarks/results/gpu_run (dry run:
# build/gpu_dry_run), at most 7 per command:
#   summary.txt  one line per step (status, exit code, seconds), then the smoke counts and the benchmark table
#   env.txt      versions and device attributes          build.log   the build of the CUDA kernels
#   smoke.jsonl  one line per smoke case                  bench.jsonl one line per benchmark (metadata first)
#   sanitize.log compute-sanitizer's reports              full.log    everything, in order
# Tier 3 adds bench_harness_float32.json, bench_harness_bfloat16.json and bench_step_float32.json (its tests'
# log goes to full.log and their outcome to summary.txt); WCRNN_GPU_TIER3=tests (or harness) runs one part
# only, so that `gpu_check.sh 1 2 3` with WCRNN_GPU_TIER3=tests stays within 7 files.
# Exit status: 0 when every step passed, 1 otherwise. Environment: WCRNN_GPU_LIMIT_S (seconds for the whole
# command), WCRNN_GPU_SKIP (comma-separated step-name prefixes to skip, e.g. smoke-triton,prewarm,bench),
# WCRNN_COMMIT (recorded in the results where git is absent), PYTHON (default python3), WCRNN_CUDA_ARCH
# (default: this GPU's architecture, which keeps the build short).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}

DRY=0
TIERS=()
for a in "$@"; do
    case "$a" in
        --dry-run) DRY=1 ;;
        1|2|3) TIERS+=("$a") ;;
        -h|--help) sed -n '2,/^set -uo pipefail/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$a' (expected --dry-run and tiers 1, 2, 3)"; exit 2 ;;
    esac
done
[ ${#TIERS[@]} -eq 0 ] && TIERS=(1 2)

if [ -n "${OUT:-}" ]; then OUTDIR=$OUT
elif [ "$DRY" = 1 ]; then OUTDIR=$REPO/build/gpu_dry_run
else OUTDIR=$REPO/benchmarks/results/gpu_run
fi
mkdir -p "$OUTDIR"
WORK=$(mktemp -d)
LIMIT=${WCRNN_GPU_LIMIT_S:-530}
RESERVE=8                       # seconds kept for the summary at the end
START=$(date +%s)
SUMMARY=$OUTDIR/summary.txt
FULL=$OUTDIR/full.log
: > "$SUMMARY"
: > "$FULL"
rm -f "$OUTDIR"/smoke.jsonl "$OUTDIR"/bench.jsonl "$OUTDIR"/sanitize.log   # appended to below: start empty
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export WCRNN_COMMIT=${WCRNN_COMMIT:-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)}
DRYARG=()
if [ "$DRY" = 1 ]; then
    DRYARG=(--dry-run)
    # nothing of wcrnn_C is needed: the Triton interpreter and the CUDA emulator (its own cache) do the work
    export WCRNN_NO_BUILD=1
else
    export WCRNN_CACHE_DIR=${WCRNN_CACHE_DIR:-$REPO/build/wcrnn_cache}
    if [ -z "${WCRNN_CUDA_ARCH:-}" ]; then
        WCRNN_CUDA_ARCH=$($PY -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')" \
                          2>/dev/null)
        export WCRNN_CUDA_ARCH=${WCRNN_CUDA_ARCH:-9.0}
    fi
fi
FAILED=()

log() { echo "$*" | tee -a "$FULL"; }
elapsed() { echo $(( $(date +%s) - START )); }

# step NAME BUDGET_S LOGFILE CMD...: CMD under `timeout`, bounded by the time left; its output goes to LOGFILE
# (appended to full.log when it ends); one line in summary.txt. Returns CMD's exit status (124: timed out).
step() {
    local name=$1 budget=$2 logf=$3
    shift 3
    local left=$(( LIMIT - $(elapsed) - RESERVE ))
    local t=$(( budget < left ? budget : left ))
    if [ "$t" -lt 5 ]; then
        printf '%-22s %-8s %5s %6s s  %s\n' "$name" skipped - 0 "no time left in the ${LIMIT} s" >> "$SUMMARY"
        return 125
    fi
    local skip
    for skip in ${WCRNN_GPU_SKIP:+${WCRNN_GPU_SKIP//,/ }}; do
        if [[ $name == "$skip"* ]]; then
            printf '%-22s %-8s %5s %6s s  %s\n' "$name" skipped - 0 "WCRNN_GPU_SKIP" >> "$SUMMARY"
            return 0
        fi
    done
    local s rc
    s=$(date +%s)
    echo "== $name (limit ${t} s): $*" >> "$logf"
    timeout -k 5 "$t" "$@" >> "$logf" 2>&1
    rc=$?
    local took=$(( $(date +%s) - s )) status=ok
    [ "$rc" -ne 0 ] && status=FAILED
    [ "$rc" -eq 124 ] && status=TIMEOUT
    printf '%-22s %-8s %5s %6s s\n' "$name" "$status" "$rc" "$took" >> "$SUMMARY"
    { echo "---------------- $name: $status (exit $rc, ${took} s)"; cat "$logf"; } >> "$FULL"
    return "$rc"
}

# wait_step PID NAME: wait for a background step; record its failure
wait_step() {
    wait "$1" || FAILED+=("$2")
}

run_or_fail() {  # run_or_fail NAME BUDGET LOG CMD...: a foreground step whose failure is recorded
    local name=$1
    step "$@" || FAILED+=("$name")
}

sanitizer() {
    local c
    for c in "$(command -v compute-sanitizer 2>/dev/null)" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
             /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
        [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
    done
    return 1
}

tier1() {
    run_or_fail env 60 "$OUTDIR/env.txt" $PY scripts/gpu_env.py
    [ "$DRY" = 0 ] && { nvidia-smi >> "$OUTDIR/env.txt" 2>&1 || true; }
    # the build first, in the background; the Triton work needs no build (WCRNN_NO_BUILD=1 in those processes,
    # so that they never wait on the build's lock) and runs beside it
    step build 300 "$OUTDIR/build.log" $PY scripts/gpu_build.py "${DRYARG[@]}" &
    local build_pid=$! pids=() names=() dt
    for dt in float64 float32 bfloat16; do
        WCRNN_NO_BUILD=1 step "smoke-triton-$dt" 240 "$WORK/smoke-triton-$dt.log" \
            $PY scripts/gpu_smoke.py --backend triton --dtypes "$dt" --out "$OUTDIR/smoke.jsonl" \
            $([ "$dt" = float32 ] || echo --no-repeat) "${DRYARG[@]}" &
        pids+=($!); names+=("smoke-triton-$dt")
    done
    # compile the Triton variants the benchmark times (T = 2), so that the timed run compiles nothing
    WCRNN_NO_BUILD=1 step prewarm-triton 240 "$WORK/prewarm.log" $PY scripts/gpu_bench.py --prewarm \
        --impls triton "${DRYARG[@]}" &
    pids+=($!); names+=(prewarm-triton)
    if wait "$build_pid"; then
        # do C++ errors of the compiled ops arrive as Python exceptions? (the first run died on one)
        [ "$DRY" = 0 ] && run_or_fail diag-errors 150 "$WORK/diag-errors.log" $PY scripts/gpu_diag_errors.py
        # what the library links, and relinked variants probed for the crash diag-errors found (run 2)
        [ "$DRY" = 0 ] && run_or_fail diag-link 150 "$WORK/diag-link.log" $PY scripts/gpu_diag_link.py
        # one process per dtype: a crash loses the rest of one dtype's cases, not the whole smoke
        for dt in float64 float32 bfloat16; do
            step "smoke-cuda-$dt" 240 "$WORK/smoke-cuda-$dt.log" $PY scripts/gpu_smoke.py --backend cuda \
                --dtypes "$dt" --out "$OUTDIR/smoke.jsonl" $([ "$dt" = float32 ] || echo --no-repeat) "${DRYARG[@]}" &
            pids+=($!); names+=("smoke-cuda-$dt")
        done
    else
        FAILED+=(build)
    fi
    local i
    for i in "${!pids[@]}"; do wait_step "${pids[$i]}" "${names[$i]}"; done
    # timings alone on the device
    local shapes=S1,S2,S3,S4,G4
    [ "$DRY" = 1 ] && shapes=S2,G4
    run_or_fail bench 240 "$WORK/bench.log" $PY scripts/gpu_bench.py --out "$OUTDIR/bench.jsonl" --shapes "$shapes" \
        "${DRYARG[@]}"
    # float32 against cuDNN: how much of the gap is TF32 (cudnn.allow_tf32 is True by default, our kernels
    # compute exact fp32 unless the matmul precision says otherwise). (Run 3's sweep of WCRNN_CUDA_ROWS=4, 8
    # found neither faster than the default and was dropped.)
    run_or_fail fp32-precision 90 "$WORK/fp32-precision.log" $PY scripts/gpu_bench.py --out "$OUTDIR/bench.jsonl" \
        --impls nn.RNN-noTF32,triton@high,triton@medium --dtypes float32 --shapes "$shapes" --tag fp32-precision \
        "${DRYARG[@]}"
    # the CUDA paths "auto" passes over at S1-S4 (it takes the register path there in float32 and bfloat16,
    # measured faster in runs 4 and 5): is "auto"'s path (the cuda lines above) still the fastest? A forced
    # block path that does not fit (S3) is recorded as refused, by design. cuda/chain: "auto"'s chain alone, on a
    # precomputed input projection; the layer's time less it is what the module adds per call (a two-point fit
    # of S1 and S4 in run 5, if B does not change the step: 0.31 ms a call and 0.43 us a step at H = 128 in
    # float32 against cuDNN's 0.17 ms and 0.44 us; this tells whether the gap is the call or the chain).
    # cuda:tiled: the tiled register path (opt-in, never measured before; refused at S3's H = 256), a
    # quarter of the register path's shared-memory reads per step: "auto" should take it where it is faster.
    # cuda+lean: FusedWCRNN(save_preactivations=False), whose backward recomputes the input projection and the
    # pre-activations (one GEMM): its price on the GPU (on the 2-core CPU 1.2-1.5x a training step).
    local rshapes=S1,S2,S3,S4
    [ "$DRY" = 1 ] && rshapes=S2
    run_or_fail cuda-paths 90 "$WORK/cuda-paths.log" $PY scripts/gpu_bench.py --out "$OUTDIR/bench.jsonl" \
        --impls cuda:block,cuda:grid,cuda:tiled,cuda/chain,cuda+lean --shapes "$rshapes" --tag cuda-paths \
        "${DRYARG[@]}"
}

# Tier 1's diagnosis, run right after tier 1 (before tier 2: run 4's sanitizers left it no time): where a step's
# time goes, Nsight Compute at S1 on the forward and backward kernels of the register path and the tiled register
# path (one launch each; the block path, which "auto" no longer takes there, was dropped for it).
# Its failure (e.g. no access to the performance counters) fails nothing.
profile() {
    # first the timeline of one call, kernel by kernel (torch.profiler, ~30 s): float32 S1 and S4, nn.RNN and auto,
    # forward and forward+backward: is the per-call gap the chain, the module's other kernels, or idle time?
    step trace 60 "$WORK/trace.log" $PY scripts/gpu_trace.py "${DRYARG[@]}"
    local ncu=""
    ncu=$(command -v ncu 2>/dev/null || ls "${CUDA_HOME:-/usr/local/cuda}/bin/ncu" /usr/local/cuda/bin/ncu 2>/dev/null \
          | head -1)
    if [ "$DRY" = 1 ]; then
        step profile 60 "$WORK/profile.log" $PY scripts/gpu_profile.py --shape S1 --paths regs,tiled --dry-run
    elif [ -n "$ncu" ]; then
        step profile 90 "$WORK/profile.log" "$ncu" -k regex:chain_ --launch-count 4 --section SpeedOfLight \
            --section LaunchStats --section Occupancy --section SchedulerStats --section WarpStateStats \
            --section MemoryWorkloadAnalysis $PY scripts/gpu_profile.py --shape S1 --paths regs,tiled
    else
        log "ncu not found: no profile"
    fi
}

tier2() {
    local san="" pids=() names=() n
    if [ "$DRY" = 1 ]; then
        log "dry run: the sanitizer cases run without compute-sanitizer"
    elif ! san=$(sanitizer); then
        log "compute-sanitizer not found (CUDA toolkit bin/ on PATH?)"
        FAILED+=(sanitize)
        return
    fi
    # name tool kernel-filter python-args...   (runs in parallel: one process per tool, the GPU is large)
    local jobs=(
        "memcheck-cuda|memcheck|kns=chain_|--backends cuda --dtypes float32,bfloat16,float64"
        "memcheck-triton|memcheck|kns=_wcrnn_|--backends triton --dtypes float32,bfloat16"
        "racecheck-cuda|racecheck|kns=chain_|--backends cuda --dtypes float32"
        "synccheck-cuda|synccheck|kns=chain_|--backends cuda --dtypes float32"
        "racecheck-triton|racecheck|kns=_wcrnn_|--backends triton --dtypes float32"
    )
    local filter_opt=--kernel-name
    # (help text captured first: with pipefail, `--help | grep -q` fails when grep stops reading early)
    local help=""
    [ -n "$san" ] && help=$("$san" --help 2>&1)
    if [ -n "$san" ] && [[ $help != *--kernel-name* ]]; then filter_opt=--filter; fi
    local j name tool filt pyargs
    for j in "${jobs[@]}"; do
        IFS='|' read -r name tool filt pyargs <<< "$j"
        if [ "$DRY" = 1 ]; then
            [ "$tool" = memcheck ] || continue   # the same cases: once is enough without a sanitizer
            # shellcheck disable=SC2086
            WCRNN_NO_BUILD=1 step "$name" 240 "$WORK/$name.log" $PY scripts/gpu_sanitize_cases.py $pyargs --dry-run &
        else
            local extra=()
            # every tensor its own cudaMalloc, so memcheck sees an access past a tensor's end
            [ "$tool" = memcheck ] && extra=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1)
            # shellcheck disable=SC2086
            step "$name" 240 "$WORK/$name.log" "${extra[@]}" "$san" --tool "$tool" "$filter_opt" "$filt" \
                --error-exitcode 1 --print-limit 20 $PY scripts/gpu_sanitize_cases.py $pyargs &
        fi
        pids+=($!); names+=("$name")
    done
    local i
    for i in "${!pids[@]}"; do
        wait_step "${pids[$i]}" "${names[$i]}"
        cat "$WORK/${names[$i]}.log" >> "$OUTDIR/sanitize.log" 2>/dev/null
    done
}

tier3() {
    # parts: harness (the autotuned pytest-benchmark harness, float32 and bfloat16) and tests (the GPU test files)
    local parts=",${WCRNN_GPU_TIER3:-harness,tests},"
    if [ "$TIER1_RAN" = 0 ]; then
        run_or_fail env 60 "$OUTDIR/env.txt" $PY scripts/gpu_env.py
        if ! step build 300 "$OUTDIR/build.log" $PY scripts/gpu_build.py "${DRYARG[@]}"; then
            FAILED+=(build)
            return
        fi
    fi
    local dt dev=cuda mode=--benchmark-only
    if [ "$DRY" = 1 ]; then dev=cpu; mode=--collect-only; fi
    [[ $parts == *,harness,* ]] && for dt in float32 bfloat16; do
        WCRNN_BENCH_DEVICE=$dev WCRNN_BENCH_DTYPE=$dt WCRNN_TRITON_AUTOTUNE=1 run_or_fail "harness-$dt" 200 \
            "$WORK/harness-$dt.log" $PY -m pytest benchmarks/test_bench_wcrnn.py "$mode" -q -p no:cacheprovider \
            -k "not step_by_step" --benchmark-json="$OUTDIR/bench_harness_$dt.json"
        grep -A80 "WCRNN benchmark summary" "$WORK/harness-$dt.log" >> "$SUMMARY" 2>/dev/null
    done
    # step by step (100 calls of T = 1: the host cost of a call beside nn.RNN's), float32, a file of its own so
    # that its time limit can never cost the harness's JSON
    [[ $parts == *,harness,* ]] && {
        WCRNN_BENCH_DEVICE=$dev WCRNN_BENCH_DTYPE=float32 run_or_fail harness-step 60 "$WORK/harness-step.log" \
            $PY -m pytest benchmarks/test_bench_wcrnn.py "$mode" -q -p no:cacheprovider -k step_by_step \
            --benchmark-json="$OUTDIR/bench_step_float32.json"
        grep -A12 "WCRNN benchmark summary" "$WORK/harness-step.log" >> "$SUMMARY" 2>/dev/null
    }
    if [[ $parts == *,tests,* ]]; then
        # -v: one line per test as it ends, so a step cut by its time limit still says what passed and failed
        local targs=(-v -rfEs -p no:cacheprovider)
        if [ "$DRY" = 1 ]; then targs+=(--collect-only); else targs+=(--timeout=60); fi
        # several workers (pytest-xdist, where installed): faster, and a test that kills its process fails alone
        if [ "$DRY" = 0 ] && $PY -c "import xdist" 2>/dev/null; then
            targs+=(-n "${WCRNN_GPU_TEST_WORKERS:-8}")
        fi
        # test_chain.py / test_module.py: the generic comparisons with the reference, for the GPU targets only
        # test_cuda.py first (the kernels' internals, fast), then the generic comparisons, then the rest
        WCRNN_REQUIRE_CUDA=1 WCRNN_TEST_TARGETS=cuda,triton-gpu run_or_fail tests 600 "$WORK/tests.log" \
            $PY -m pytest tests/test_cuda.py tests/test_chain.py tests/test_module.py tests/test_triton.py \
            tests/test_export.py tests/test_nn_rnn_clients.py "${targs[@]}"
        grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed)|tests? collected" "$WORK/tests.log" | head -40 >> "$SUMMARY"
        # cut short (no final summary line): the count of each outcome so far
        grep -qE "[0-9]+ (passed|failed)" "$WORK/tests.log" || grep -oE " (PASSED|FAILED|ERROR|SKIPPED) " \
            "$WORK/tests.log" | sort | uniq -c >> "$SUMMARY"
    fi
}

TIER1_RAN=0
log "gpu_check: tiers ${TIERS[*]}$([ "$DRY" = 1 ] && echo ' (dry run on CPU)'), commit $WCRNN_COMMIT, limit ${LIMIT} s, results in $OUTDIR"
for t in "${TIERS[@]}"; do
    s=$(date +%s)
    "tier$t"
    printf '%-22s %-8s %5s %6s s\n' "== tier $t" done - $(( $(date +%s) - s )) >> "$SUMMARY"
    [ "$t" = 1 ] && { TIER1_RAN=1; profile; }
done

# the summary: steps, smoke counts, benchmark table (the reply of the device tool shows the end of stdout)
if [ -f "$OUTDIR/smoke.jsonl" ]; then
    $PY - "$OUTDIR/smoke.jsonl" >> "$SUMMARY" 2>&1 <<'EOF'
import collections, json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
c = collections.Counter((r["backend"], r["status"]) for r in rows)
print("smoke:", ", ".join(f"{b} {s} {n}" for (b, s), n in sorted(c.items())))
for r in rows:
    if r["status"] in ("fail", "error"):
        print("  ", r["status"], r["backend"], r["path"], r["dtype"], r["kind"], r["nonlinearity"], f"L={r['lengths']}",
              f"T={r['T']} B={r['B']} H={r['H']}", r.get("failed", ""), r.get("message", "")[:200])
EOF
fi
[ -f "$WORK/bench.log" ] && sed -n '/^ms per call/,$p' "$WORK/bench.log" >> "$SUMMARY"
# "auto"'s CUDA path against the forced ones and cuDNN, one line per (dtype, shape, mode)
if [ -f "$OUTDIR/bench.jsonl" ]; then
    $PY - "$OUTDIR/bench.jsonl" >> "$SUMMARY" 2>&1 <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ms = {(r["dtype"], r["shape"], r["mode"], r["impl"]): r["median_ms"] for r in rows if r.get("status") == "ok"}
host = {(r["dtype"], r["shape"], r["mode"], r["impl"]): r.get("host_ms") for r in rows if r.get("status") == "ok"}
cuda = sorted({k[3] for k in ms if k[3].startswith("cuda") and not set(":/+") & set(k[3])})  # or cuda-emulated
keys = sorted({k[:3] for k in ms if k[3].startswith("cuda") and set(":/+") & set(k[3])})
if keys and cuda:
    c = cuda[0]
    print('CUDA paths: ms per call; "auto" = the cuda lines; best forced / auto > 1: "auto" took the faster path;')
    print('chain: the chain alone (cuda/chain), "auto" less it = what the module adds per call; host: ms until the')
    print('call returned (work enqueued, not waited for): close to the call\'s ms, the call is bound by host time;')
    print('lean: save_preactivations=False (cuda+lean), not a path: outside best/auto')
    print(f"{'dtype':8} {'shape':5} {'mode':16} {'nn.RNN':>9} {'auto':>9} {'block':>9} {'grid':>9} {'tiled':>9} "
          f"{'chain':>9} {'best/auto':>9} {'nnRNN/auto':>10} {'host RNN':>9} {'host auto':>9} {'lean':>9}")
    for dt, sh, mo in keys:
        got = {p: ms.get((dt, sh, mo, f"{c}:{p}")) for p in ("block", "grid", "tiled")}
        auto, rnn = ms.get((dt, sh, mo, c)), ms.get((dt, sh, mo, "nn.RNN"))
        forced = [v for v in got.values() if v]
        f = lambda v: f"{v:9.3f}" if v else f"{'-':>9}"  # noqa: E731
        r = lambda v, w, n: f"{v / w:{n}.2f}" if v and w else f"{'-':>{n}}"  # noqa: E731
        print(f"{dt:8} {sh:5} {mo:16} {f(rnn)} {f(auto)} {f(got['block'])} {f(got['grid'])} {f(got['tiled'])} "
              f"{f(ms.get((dt, sh, mo, c + '/chain')))} {r(min(forced) if forced else None, auto, 9)} "
              f"{r(rnn, auto, 10)} {f(host.get((dt, sh, mo, 'nn.RNN')))} {f(host.get((dt, sh, mo, c)))} "
              f"{f(ms.get((dt, sh, mo, c + '+lean')))}")
EOF
fi
# GPU memory of a forward+backward (gpu_bench's memory_of): cuDNN, "auto" and save_preactivations=False
if [ -f "$OUTDIR/bench.jsonl" ]; then
    $PY - "$OUTDIR/bench.jsonl" >> "$SUMMARY" 2>&1 <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
mem = {(r["dtype"], r["shape"], r["impl"]): (r["kept_mib"], r["peak_mib"]) for r in rows if "kept_mib" in r}
cuda = sorted({k[2] for k in mem if k[2].startswith("cuda") and "+" not in k[2]})
if mem and cuda:
    impls = ["nn.RNN", cuda[0], cuda[0] + "+lean"]
    print("GPU memory of one forward+backward, MiB above the live set before it: kept (after the forward, the")
    print("outputs included) / peak; lean = save_preactivations=False")
    print(f"{'dtype':8} {'shape':5} " + " ".join(f"{i[:17]:>17}" for i in impls))
    for dt, sh in sorted({k[:2] for k in mem}):
        cells = [mem.get((dt, sh, i)) for i in impls]
        print(f"{dt:8} {sh:5} " + " ".join(f"{c[0]:8.1f}/{c[1]:8.1f}" if c else f"{'-':>17}" for c in cells))
EOF
fi
grep -E "^(trace |    )" "$WORK/trace.log" 2>/dev/null | cut -c1-240 | head -120 >> "$SUMMARY"
cat "$WORK"/fp32-precision.log "$WORK"/cuda-paths.log 2>/dev/null | grep -E "^(fp32-precision|cuda-paths) " >> "$SUMMARY"
grep -E "chain_.*kernel|^ +(Duration|Registers Per Thread|Warp Cycles Per Issued Instruction|Issue Slots Busy|Compute \(SM\) Throughput|Mem Pipes Busy|Max Bandwidth) " \
    "$WORK/profile.log" 2>/dev/null | cut -c1-160 >> "$SUMMARY"
if [ -f "$OUTDIR/sanitize.log" ]; then
    # (each refused plan is in sanitize.log; "sanitizer cases done" counts them)
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|sanitizer cases done" "$OUTDIR/sanitize.log" | sort | uniq -c >> "$SUMMARY"
fi
if [ ${#FAILED[@]} -ne 0 ]; then
    echo "gpu_check: FAILED steps: ${FAILED[*]} ($(elapsed) s)" >> "$SUMMARY"
else
    echo "gpu_check: all steps passed ($(elapsed) s)" >> "$SUMMARY"
fi
cat "$SUMMARY"
cat "$SUMMARY" >> "$FULL"
rm -rf "$WORK"
[ ${#FAILED[@]} -eq 0 ]
