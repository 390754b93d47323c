"""Turn a pytest-benchmark JSON written by this harness into the README's markdown table.

    python benchmarks/summarize.py benchmarks/results/<file>.json
"""
from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    data = json.load(open(path))
    mi, ci = data["machine_info"], data.get("commit_info", {})
    rows = {}
    for b in data["benchmarks"]:
        i = b["extra_info"]
        rows[(i["shape"], i["mode"], i["impl"])] = (b["stats"]["mean"], i)
    print(f"Measured {data['datetime'][:10]} on {mi.get('device_name')} ({mi.get('torch_num_threads')} threads), "
          f"torch {mi.get('torch')}, {mi.get('bench_dtype')}, commit {ci.get('id', '?')[:7]}; raw JSON: `{path}`.\n")
    print("| shape (T, B, I, H) | mode | impl | ms | us/step | tokens/s | vs nn.RNN | vs reference | x GEMM floor |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    order = {"nn.RNN": 0, "reference": 1, "torch": 2, "cpp": 3, "triton": 4, "cuda": 5, "gemm-floor": 9}
    for key in sorted(rows, key=lambda k: (k[0], k[1] == "floor", k[1], order.get(k[2], 6))):
        mean, i = rows[key]
        shape = f"{i['shape']} ({i['T']}, {i['B']}, {i['I']}, {i['H']})"

        def fmt(name):
            return f"{i[name]:.2f}" if name in i else ""
        print(f"| {shape} | {i['mode']} | {i['impl']} | {mean * 1e3:.2f} | {mean * 1e6 / i['T']:.1f} | "
              f"{i.get('tokens_per_s', 0):,.0f} | {fmt('ratio_vs_nn_rnn')} | {fmt('ratio_vs_reference')} | "
              f"{fmt('multiple_of_gemm_floor')} |")


if __name__ == "__main__":
    main(sys.argv[1])
