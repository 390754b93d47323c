"""Sweep runner for the paper's central experiments on the adding problem: one process per run, results
appended as JSON lines, resumable, a progress bar, several workers.

    python examples/sweep.py list                                  # the experiments and their run counts
    python examples/sweep.py run fig3_add100 lr_gamma --workers 2  # run (or resume) experiments
    python examples/sweep.py run all --workers 2 --time-limit 3600 # everything, stop starting runs after 1 h
    python examples/sweep.py report                                # tables (markdown) and figures from the JSON lines
    python examples/sweep.py one '{"model": "wcrnn", ...}'         # one run, prints its JSON line (what workers run)

Each experiment has its own file ``<results-dir>/<experiment>.jsonl``; every finished run appends one line
(the parent process is the only writer, so lines never interleave). ``run`` skips the runs whose ``id``
is already in the file, so an interrupted sweep resumes where it stopped (a run interrupted half-way is
started again from scratch). Every run is its own ``python`` process with one torch thread, so
``--workers 2`` keeps two cores busy; the runs are ordered seed-major across the chosen experiments
(seed 0 of every configuration first), so a sweep stopped early still covers every configuration.

Every run trains one network on fresh batches of the adding problem (``tasks.adding_problem``) with Adam
for a fixed number of steps, evaluates the RMS error on a fixed test set of 1000 sequences every
``eval_every`` steps, and records the learning curve, the best test RMS, the first step with test RMS
under 0.05 (the paper's minimal performance, MP) and whether the loss became non-finite.

Models: ``wcrnn`` (a FusedWCRNN with a scalar residual r and coupling gamma, nn.RNN's default weights)
and ``elman`` (a plain torch.nn.RNN with init ``default``, ``weakly_coupled`` (W_hh <- r I + gamma W,
biases zeroed: ``init.weakly_coupled_init_``), ``chain`` (Orhan & Pitkow's feed-forward chain,
``init.chain_matrix``) or ``orthogonal`` (``init.orthogonal_matrix``)); a linear readout of the last state.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time

import _common  # noqa: E402  (examples/_common.py: a source checkout's package first)

HERE = _common.HERE
RESULTS = os.path.join(HERE, "results", "sweeps")

R_GRID = (0.95, 0.995, 1.0, 1.0025, 1.01)

# Shared defaults of every run; experiments override some of them.
BASE = dict(task="adding", T=100, hidden=64, batch=64, steps=3000, eval_every=100, lr=0.01, gamma=0.01,
            r=1.0, nonlinearity="relu", model="wcrnn", init="default", alpha=1.0, test_size=1000,
            threshold=0.05)


def _grid(name, seeds, **axes):
    """Configurations of one experiment: the product of ``axes`` (lists), seed-major."""
    keys = list(axes)
    out = []
    for seed in range(seeds):
        for vals in itertools.product(*(axes[k] for k in keys)):
            cfg = dict(BASE, experiment=name, seed=seed, **dict(zip(keys, vals)))
            out.append(cfg)
    return out


def experiments():
    """name -> list of run configurations. The sizes here are those of the committed results."""
    ex = {}
    # Fig. 3: best test RMS and iterations to RMS 0.05 against r, gamma = 0.01 (5 instances at T = 100,
    # 3 at T = 400: the budget of a shared 2-core machine).
    ex["fig3_add100"] = _grid("fig3_add100", 5, r=list(R_GRID), T=[100], steps=[3000])
    ex["fig3_add400"] = _grid("fig3_add400", 3, r=list(R_GRID), T=[400], steps=[1500])
    ex["fig3_add200"] = _grid("fig3_add200", 3, r=list(R_GRID), T=[200], steps=[2000])  # run last, if time allows
    # Supplement: learning rate x coupling on ADD100 (critical residual); the (lr 0.01, gamma 0.01) cell
    # is fig3_add100's r = 1 (same seeds, same configuration).
    ex["lr_gamma"] = [c for c in _grid("lr_gamma", 2, gamma=[0.01, 0.001], lr=[0.1, 0.01], r=[1.0],
                                       steps=[3000]) if not (c["gamma"] == 0.01 and c["lr"] == 0.01)]
    # Weakly coupled initialisation of a plain Elman RNN against its default initialisation.
    ex["elman_init"] = _grid("elman_init", 3, model=["elman"], init=["weakly_coupled", "default"],
                             nonlinearity=["tanh"], lr=[0.001], r=[1.0], gamma=[0.01], steps=[3000])
    # the same at lr 0.01 (run after the first sweep: at lr 0.001 neither initialisation learnt in 3000 steps)
    ex["elman_init_lr01"] = _grid("elman_init_lr01", 3, model=["elman"], init=["weakly_coupled", "default"],
                                  nonlinearity=["tanh"], lr=[0.01], r=[1.0], gamma=[0.01], steps=[3000])
    # Orhan & Pitkow: plain RNN with the non-normal chain against orthogonal initialisation (T = 50 so
    # that the chain of H = 64 units is longer than the sequence).
    ex["op_chain"] = _grid("op_chain", 3, model=["elman"], init=["chain", "orthogonal"], T=[50],
                           nonlinearity=["relu"], lr=[0.001], alpha=[1.0], steps=[3000])
    for runs in ex.values():
        for cfg in runs:
            cfg["id"] = run_id(cfg)
    return ex


ORDER = ("fig3_add100", "lr_gamma", "elman_init", "op_chain", "fig3_add400", "elman_init_lr01", "fig3_add200")


def run_id(cfg):
    keys = ("model", "init", "nonlinearity", "T", "hidden", "batch", "steps", "lr", "gamma", "r", "alpha", "seed")
    return ",".join(f"{k}={cfg[k]}" for k in keys)


# ---------------------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------------------

def build_model(cfg):
    import torch
    from torch import nn

    from wcrnn_kernels import init
    from wcrnn_kernels.module import FusedWCRNN

    H = cfg["hidden"]
    if cfg["model"] == "wcrnn":
        rnn = FusedWCRNN(2, H, batch_first=True, residual="scalar", r=cfg["r"], gamma=cfg["gamma"],
                         nonlinearity=cfg["nonlinearity"])
    elif cfg["model"] == "elman":
        rnn = nn.RNN(2, H, batch_first=True, nonlinearity=cfg["nonlinearity"])
        kind = cfg["init"]
        if kind == "weakly_coupled":
            init.weakly_coupled_init_(rnn, "scalar", r=cfg["r"], gamma=cfg["gamma"])
        elif kind in ("chain", "orthogonal"):
            W = (init.chain_matrix(H, alpha=cfg["alpha"]) if kind == "chain"
                 else init.orthogonal_matrix(H, gain=cfg["alpha"]))
            with torch.no_grad():
                rnn.weight_hh_l0.copy_(W)
                rnn.bias_hh_l0.zero_()
                rnn.bias_ih_l0.zero_()
        elif kind != "default":
            raise ValueError(f"init: expected 'default', 'weakly_coupled', 'chain' or 'orthogonal', got {kind!r}")
    else:
        raise ValueError(f"model: expected 'wcrnn' or 'elman', got {cfg['model']!r}")

    return _common.LastStateReadout(rnn, 1)


def run_one(cfg):
    import torch
    from torch import nn

    from wcrnn_kernels import tasks

    torch.set_num_threads(1)
    torch.manual_seed(cfg["seed"])  # the weights of seed s are the same for every r / lr / gamma
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    gen = torch.Generator().manual_seed(1000 + cfg["seed"])
    xt, yt = tasks.adding_problem(cfg["test_size"], cfg["T"], generator=torch.Generator().manual_seed(12345))

    def test_rms():
        with torch.no_grad():
            return tasks.rms_error(model(xt), yt)

    steps, curve = [0], [test_rms()]
    reached, diverged = None, False
    t0 = time.perf_counter()
    for step in range(1, cfg["steps"] + 1):
        x, y = tasks.adding_problem(cfg["batch"], cfg["T"], generator=gen)
        loss = nn.functional.mse_loss(model(x), y)
        if not torch.isfinite(loss):
            diverged = True
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % cfg["eval_every"] == 0 or step == cfg["steps"]:
            steps.append(step)
            curve.append(test_rms())
            if not math.isfinite(curve[-1]):
                diverged = True
                break
            if reached is None and curve[-1] < cfg["threshold"]:
                reached = step
    finite = [v for v in curve if math.isfinite(v)]
    return dict(cfg, steps_curve=steps, test_rms=curve, best_rms=min(finite) if finite else None,
                final_rms=curve[-1], steps_to_threshold=reached, steps_run=steps[-1], diverged=diverged,
                wall_time_s=time.perf_counter() - t0, torch=torch.__version__,
                host_load=os.getloadavg()[0])


# ---------------------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------------------

def read_jsonl(path):
    """The results in one JSON-lines file (none if it does not exist); a line cut by a kill is skipped."""
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a partial line (or a blank one): its run is redone
    return rows


def _done_ids(path):
    return {r["id"] for r in read_jsonl(path) if "id" in r}


def _select(names):
    ex = experiments()
    if names == ["all"]:
        names = list(ORDER)
    bad = [n for n in names if n not in ex]
    if bad:
        raise SystemExit(f"experiments: unknown {bad}; choose from {sorted(ex)} or 'all'")
    return names, ex


def cmd_run(args):
    from tqdm import tqdm

    names, ex = _select(args.experiments)
    os.makedirs(args.results_dir, exist_ok=True)
    if args.quick:  # the CI smoke run: tiny networks, a few steps (ids differ from the real runs')
        for n in names:
            ex[n] = [dict(c, T=min(c["T"], 20), hidden=8, steps=20, eval_every=10, test_size=50) for c in ex[n]]
            for c in ex[n]:
                c["id"] = run_id(c)
    todo = []
    for n in names:
        done = _done_ids(os.path.join(args.results_dir, f"{n}.jsonl"))
        todo += [cfg for cfg in ex[n] if cfg["id"] not in done]
    # seed-major across experiments (stable within a seed): a sweep cut short still covers every config
    todo.sort(key=lambda c: c["seed"])
    total = sum(len(ex[n]) for n in names)
    done_before = total - len(todo)
    if args.max_runs is not None:
        todo = todo[:args.max_runs]
    bar = tqdm(total=total, initial=done_before, desc="runs", unit="run", smoothing=0)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, os.path.abspath(__file__), "one"]
    running = []  # (Popen, cfg)
    t0 = time.time()
    queue = list(todo)
    failed = succeeded = 0
    while queue or running:
        while queue and len(running) < args.workers and (args.time_limit is None
                                                         or time.time() - t0 < args.time_limit):
            cfg = queue.pop(0)
            p = subprocess.Popen(cmd + [json.dumps(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env)
            running.append((p, cfg))
        if not running:
            break
        time.sleep(0.5)
        for p, cfg in list(running):
            if p.poll() is None:
                continue
            running.remove((p, cfg))
            out, err = p.communicate()
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if p.returncode != 0 or not lines:
                tqdm.write(f"run failed ({p.returncode}): {cfg['id']}\n{err[-2000:]}")
                failed += 1
                if failed >= args.max_failures:
                    queue.clear()
                    tqdm.write(f"{failed} runs failed: no new runs are started (--max-failures)")
                continue
            with open(os.path.join(args.results_dir, f"{cfg['experiment']}.jsonl"), "a") as f:
                f.write(lines[-1] + "\n")
            res = json.loads(lines[-1])
            succeeded += 1
            bar.update(1)
            bar.set_postfix_str(f"{cfg['experiment']} best {res['best_rms']:.3f} "
                                f"({res['wall_time_s']:.0f} s)")
    bar.close()
    left = len(queue)
    remaining = total - done_before - succeeded  # configs without a result line, failed runs included
    if left:
        status = f"stopped by --time-limit with {left} runs not started"
    elif remaining:
        status = f"{remaining} of {total} runs still to do (--max-runs, or failed runs): run the sweep again"
    else:
        status = "all runs done"
    print(f"{status}; wall time {time.time() - t0:.0f} s")


def cmd_one(args):
    cfg = json.loads(args.config)
    cfg = {**BASE, "seed": 0, "experiment": "one", **cfg}
    cfg.setdefault("id", run_id(cfg))
    print(json.dumps(run_one(cfg)), flush=True)


def cmd_list(args):
    names, ex = _select(args.experiments or ["all"])
    for n in names:
        done = len(_done_ids(os.path.join(args.results_dir, f"{n}.jsonl")))
        print(f"{n}: {len(ex[n])} runs ({done} done)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", default=RESULTS)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("experiments", nargs="+")
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--max-runs", type=int, default=None, help="start at most this many runs")
    r.add_argument("--quick", action="store_true", help="tiny networks and 20 steps (CI smoke run)")
    r.add_argument("--max-failures", type=int, default=3, help="stop starting runs after this many fail")
    r.add_argument("--time-limit", type=float, default=None, help="seconds after which no new run starts")
    o = sub.add_parser("one")
    o.add_argument("config")
    ls = sub.add_parser("list")
    ls.add_argument("experiments", nargs="*")
    rep = sub.add_parser("report")
    rep.add_argument("--out-md", default=None)
    args = p.parse_args(argv)
    if args.cmd == "run":
        if args.workers < 1:
            raise SystemExit(f"--workers: expected a positive integer, got {args.workers}")
        cmd_run(args)
    elif args.cmd == "one":
        cmd_one(args)
    elif args.cmd == "list":
        cmd_list(args)
    else:
        from sweep_report import report  # noqa: E402  (examples/sweep_report.py)
        report(args.results_dir, args.out_md)


if __name__ == "__main__":
    main()
