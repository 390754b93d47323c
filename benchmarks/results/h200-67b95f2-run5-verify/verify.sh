#!/usr/bin/env bash
# one-off: the register path under "auto" (kAutoRegs = true), built, timed against the block/grid paths and cuDNN
set -uo pipefail
export PYTHONUNBUFFERED=1 WCRNN_CACHE_DIR=$PWD/build/wcrnn_cache WCRNN_CUDA_ARCH=9.0 PYTHONPATH=$PWD
S=$(date +%s)
timeout 150 python3 scripts/gpu_build.py > $OUT/build.log 2>&1; echo "build rc $? $(( $(date +%s)-S )) s"
cat > /tmp/vb.py <<'PY'
import os, sys
sys.path[:0] = ["benchmarks", "scripts"]
import bench_config as bc
bc.SHAPES.update(L1=(128, 1024, 32, 256), L2=(128, 4096, 32, 128), L3=(256, 256, 32, 64))
import gpu_bench
sys.argv = ["gpu_bench.py", "--out", os.environ["OUT"] + "/verify.jsonl", "--impls", os.environ["IMPLS"],
            "--shapes", os.environ["SHAPES"], "--tag", "verify-auto-regs"]
gpu_bench.main()
PY
IMPLS=nn.RNN,cuda,cuda:block,cuda:grid SHAPES=S1,S2,S3,S4,L1,L2,L3 timeout 100 python3 /tmp/vb.py 2>&1 | tee $OUT/bench.log | grep -v "^\s*$" | tail -60
echo "bench $(( $(date +%s)-S )) s"
timeout $(( 215 - ($(date +%s)-S) )) python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda.py 2>&1 | tee $OUT/tests.log | tail -15
echo "done $(( $(date +%s)-S )) s"
