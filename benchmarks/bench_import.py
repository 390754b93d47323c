"""What `import wcrnn_kernels` and the first call cost a fresh process (every spawned DataLoader worker, every
script start), on CPU.

    python benchmarks/bench_import.py [--rounds 7] [--paths DIR[,DIR...]]

Each round starts one fresh Python per package location (--paths: directories put first on sys.path, so two
checkouts can be compared, e.g. this one and a `git worktree` of an older commit; default: this checkout), the
locations in shuffled order, and in each process measures, one after the other:
  torch            `import torch`: seconds, and the resident set after it (MB)
  import           `import wcrnn_kernels` after it: seconds, and what it added to the resident set (MB)
  first call       the first FusedWCRNN(32, 128) forward and backward at T = 8, B = 4 (the backends' registration
                   and the C++ library's load happen here, not at import): seconds, resident set added (MB)
  dynamo           whether torch._dynamo was imported by then (a program that never compiles need not load it)
Medians over the rounds. The C++ library must be built already (a first build is not an import cost).
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r"""
import json, sys, time
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
t0 = time.perf_counter()
import torch
t1 = time.perf_counter(); r1 = rss_mb()
import wcrnn_kernels
t2 = time.perf_counter(); r2 = rss_mb()
m = wcrnn_kernels.FusedWCRNN(32, 128)
out, h = m(torch.randn(8, 4, 32, requires_grad=True))
(out.sum() + h.sum()).backward()
t3 = time.perf_counter(); r3 = rss_mb()
print(json.dumps({"torch_s": t1 - t0, "torch_mb": r1, "import_s": t2 - t1, "import_mb": r2 - r1,
                  "call_s": t3 - t2, "call_mb": r3 - r2, "dynamo": "torch._dynamo" in sys.modules,
                  "package": wcrnn_kernels.__file__}))
"""


def one(path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([path] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    res = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=600,
                         cwd="/")
    if res.returncode != 0:
        raise SystemExit(f"{path}: the child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--paths", default=REPO)
    args = ap.parse_args()
    paths = [os.path.abspath(p) for p in args.paths.split(",") if p]
    runs = {p: [] for p in paths}
    for _ in range(args.rounds):
        for p in random.sample(paths, len(paths)):
            runs[p].append(one(p))
    print(f"medians of {args.rounds} fresh processes per location; seconds, MB of resident set")
    print(f"{'location':40s} {'torch s':>8s} {'torch MB':>9s} {'import s':>9s} {'import MB':>10s} "
          f"{'1st call s':>11s} {'call MB':>8s}  dynamo loaded")
    for p, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("torch_s", "torch_mb", "import_s", "import_mb",
                                                               "call_s", "call_mb")}
        if any(not r["package"].startswith(p) for r in rs):
            raise SystemExit(f"{p}: the children imported wcrnn_kernels from {rs[0]['package']}, not from there")
        dyn = sorted({r["dynamo"] for r in rs})
        print(f"{p[-40:]:40s} {med['torch_s']:8.3f} {med['torch_mb']:9.0f} {med['import_s']:9.3f} "
              f"{med['import_mb']:10.0f} {med['call_s']:11.3f} {med['call_mb']:8.0f}  {dyn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
