"""What every Triton kernel variant a launcher can choose costs on Hopper (sm_90), measured without a GPU.

The launchers of ``triton_kernels`` pick a config per launch situation (kernel, weight dtype, fp32 matmul
precision, residual form, padded hidden size): ``_default_config`` where nothing is tuned, else one of
the autotune candidates that ``_prune`` keeps. ``launcher_variants()`` lists every distinct compile those
choices can produce; ``measure()`` cross-compiles them for sm_90 in a process pool and reads registers,
stack and shared memory; ``markdown_table()`` formats the result. ``tests/test_resources.py`` fails on
a variant over the shared-memory limit or a default that spills where none should;
``python -m wcrnn_kernels.triton_resources`` prints the table.

What makes two variants different compiles: the kernel, the dtypes, both dot precisions (PREC_CD only
where a dense R uses it), the residual form, the padded size HP, the config (resident or streamed,
BLOCK_K, num_warps, num_stages), and whether H is a multiple of 16: Triton specialises H on that, and
the code for other H masks every element separately and needs many more registers (at HP = 64 the fp32
forward with W resident uses 80 registers when 16 | H and spills 2.8 KB per thread otherwise). (H = 1,
which Triton also specialises, compiles the HP = 16 code with H a constant; it is not listed.) The
nonlinearity and the lengths are fixed at tanh with lengths, the most code: no other choice needs more
shared memory, though ptxas may settle on fewer registers and a few bytes of stack for one of them (see
tests/test_resources.py).

Defaults are compiled through ptxas: registers and stack come from the cubin. Autotune candidates only
need their shared memory, which Triton fixes when it allocates shared memory at the start of the LLVM
lowering, so for them compilation stops there (a fifth of the time of a full compile or less).
Results are cached on disk, keyed by the versions of Triton and ptxas, the kernels' source and the code
that compiles and reads them, so a second run with none of that changed compiles nothing.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import time

HIDDEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024)
# torch.get_float32_matmul_precision() settings; the kernels' PREC / PREC_CD follow from them
FP32_SETTINGS = ("highest", "high", "medium")
DTYPES = ("fp16", "bf16", "fp32", "fp64")
RES_NAMES = {0: "diag", 1: "rot", 2: "dense"}


@dataclasses.dataclass(frozen=True, order=True)
class Variant:
    """One distinct compile: everything that reaches Triton as a constexpr, a specialisation or an option."""
    kind: str              # "fwd" / "bwd"
    w_dtype: str           # W_hh as the kernel gets it: fp16, bf16, fp32, fp64
    HP: int                # padded hidden size
    aligned: bool          # H % 16 == 0
    res_kind: int          # 0 diag, 1 rotation pairs, 2 dense
    prec: str              # PREC (the W_hh product)
    prec_cd: str           # PREC_CD (a dense R's product; "ieee" where no dense R uses it)
    resident: bool
    block_k: int
    num_warps: int
    num_stages: int

    @property
    def H(self):
        # a hidden size of the bucket with the right divisibility (the kernels see H only at run time,
        # and its divisibility by 16); HP - 2 stays even for the rotation form
        return self.HP if self.aligned else self.HP - 2

    @property
    def variant_name(self):
        return "resident" if self.resident else f"streamed/{self.block_k}"

    def config(self):
        return {"W_RESIDENT": self.resident, "BLOCK_K": self.block_k, "num_warps": self.num_warps,
                "num_stages": self.num_stages}

    def problem(self):
        """triton_kernels._Problem of this variant (for the shared-memory bound)."""
        from . import triton_kernels as tk
        w_dtype = _torch_dtype(self.w_dtype)
        meta = dict(HP=self.HP, RES_KIND=self.res_kind, PREC=self.prec, PREC_CD=self.prec_cd,
                    CD=_tl_dtype(tk._compute_dtype(w_dtype)), SPLIT=tk.SPLIT_HALF_STATE and w_dtype in tk._HALF)
        return tk._problem(meta, w_dtype.itemsize, self.kind == "bwd")

    def smem_bound(self):
        from . import triton_kernels as tk
        return tk._smem_bytes(self.resident, self.block_k, self.num_stages, self.problem())

    def __str__(self):
        return (f"{self.kind} {self.w_dtype} HP={self.HP}{'' if self.aligned else ' (H%16!=0)'} "
                f"{RES_NAMES[self.res_kind]} PREC={self.prec}/{self.prec_cd} {self.variant_name} "
                f"warps={self.num_warps} stages={self.num_stages}")


@dataclasses.dataclass
class Uses:
    """Why a variant is listed: the fp32 precision settings whose default or candidate it is."""
    default_for: list = dataclasses.field(default_factory=list)
    candidate_for: list = dataclasses.field(default_factory=list)

    @property
    def is_default(self):
        return bool(self.default_for)


# --------------------------------------------------------------------------------------------------
# Cross-compilation of one kernel variant without a GPU, and what it costs on the target
# --------------------------------------------------------------------------------------------------

_SIG_DTYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64"}


def _compile_source(kind, w_dtype, H, res_kind, config, prec="ieee", prec_cd=None, nonlin=0, lengths=True,
                    arch=90):
    """(ASTSource, GPUTarget, options) of one kernel variant, specialised as a launch specialises it."""
    import torch
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from . import triton_kernels as tk
    wdt = _SIG_DTYPE[str(w_dtype).replace("torch.", "")]
    cd = "fp64" if w_dtype == torch.float64 else "fp32"
    if kind == "fwd":
        fn, ptrs = tk._wcrnn_fwd_kernel, [wdt] * 5 + ["i64", wdt, wdt, wdt, cd]
    elif kind == "bwd":
        fn, ptrs = tk._wcrnn_bwd_kernel, [cd, cd, cd, wdt, cd, cd, "i64", cd, cd, cd, cd]
    else:
        raise ValueError(f"kind: expected 'fwd' or 'bwd', got {kind!r}")
    if prec_cd is None:
        prec_cd = prec
    const = dict(RES_KIND=res_kind, NONLIN=nonlin, HAS_LENGTHS=lengths, CD=tl.float64 if cd == "fp64" else tl.float32,
                 PREC=prec if wdt == "fp32" else "ieee", PREC_CD=prec_cd if cd == "fp32" else "ieee",
                 EMULATE_BF16=False, SPLIT=tk.SPLIT_HALF_STATE and w_dtype in tk._HALF,
                 HP=tk.padded_hidden(H), BLOCK=tk.BLOCK_B, W_RESIDENT=config["W_RESIDENT"], BLOCK_K=config["BLOCK_K"])
    if kind == "fwd":
        const.update(SAVE_A=True)
    if kind == "bwd":
        const.update(NEED_DELTA=True, SCALE_G=w_dtype == torch.float16)
    sig = dict(zip(fn.arg_names, ["*" + p for p in ptrs] + ["i32"] * 3))
    sig.update({k: "constexpr" for k in const})
    # The specialisation a launch gets: every tensor 16-byte aligned (torch's allocations are), and H
    # marked divisible by 16 when it is (T and B are never specialised). The divisibility matters: at
    # H = 64 the fp32 resident forward needs 80 registers, at H = 63 ptxas spills it.
    aligned = list(range(len(ptrs))) + ([fn.arg_names.index("H")] if H % 16 == 0 else [])
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in const.items()},
                    attrs={(i,): [["tt.divisibility", 16]] for i in aligned})
    options = dict(num_warps=config.get("num_warps", 4), num_stages=config.get("num_stages", 2))
    return src, GPUTarget("cuda", arch, 32), options


def cross_compile(kind, w_dtype, H, res_kind, config, *, prec="ieee", prec_cd=None, nonlin=0, lengths=True,
                  arch=90):
    """Compile one variant of ``_wcrnn_{kind}_kernel`` for ``sm_{arch}`` through Triton's NVIDIA pipeline
    (no GPU needed). ``config``: {"W_RESIDENT", "BLOCK_K", "num_warps", "num_stages"}. ``prec``: the fp32
    precision ("ieee", "tf32x3", "tf32"), PREC for float32 weights and PREC_CD (a dense R) unless
    ``prec_cd`` says otherwise; float64 is always "ieee". The backward's state dtype is float32 (float64
    for float64 weights), as the op passes it. Returns the CompiledKernel."""
    import triton
    src, target, options = _compile_source(kind, w_dtype, H, res_kind, config, prec, prec_cd, nonlin, lengths,
                                           arch)
    return triton.compile(src, target=target, options=options)


def resource_usage(compiled):
    """(registers per thread, stack bytes per thread, shared memory bytes) of a cross-compiled kernel,
    read from its cubin with the cuobjdump that ships with Triton (None where unavailable)."""
    import re
    import subprocess
    import tempfile
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    regs = stack = None
    if os.path.exists(tool):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "k.cubin")
            with open(path, "wb") as f:
                f.write(compiled.asm["cubin"])
            txt = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True).stdout
        m_regs, m_stack = re.search(r"REG:(\d+)", txt), re.search(r"STACK:(\d+)", txt)
        regs = int(m_regs.group(1)) if m_regs else None
        stack = int(m_stack.group(1)) if m_stack else None
    return regs, stack, compiled.metadata.shared


def _tl_dtype(torch_dtype):
    from . import triton_kernels as tk
    return tk._TL_DTYPE[torch_dtype]


def _torch_dtype(name):
    import torch
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}[name]


def launcher_variants(kinds=("fwd", "bwd"), buckets=HIDDEN_BUCKETS, aligned=(True, False), bwd_half_weights=True):
    """{Variant: Uses} for every config a launcher can choose. The forward sees W_hh in the input dtype;
    the backward gets float32 W_hh for half models from the op (ops.py) and float64 for float64 ones,
    but ``wcrnn_bwd`` itself also takes fp16 / bf16 weights (``bwd_half_weights``)."""
    from . import triton_kernels as tk
    out = {}
    for kind in kinds:
        dtypes = DTYPES if kind == "fwd" or bwd_half_weights else ("fp32", "fp64")
        for dt in dtypes:
            for setting in FP32_SETTINGS:
                for res_kind in (0, 1, 2):
                    for HP in buckets:
                        meta, default, kept = tk._launch_choices(kind, _torch_dtype(dt), HP, res_kind, setting)
                        for al in aligned:
                            # PREC_CD only reaches code through a dense R: the same compile otherwise
                            base = dict(kind=kind, w_dtype=dt, HP=HP, aligned=al, res_kind=res_kind,
                                        prec=meta["PREC"], prec_cd=meta["PREC_CD"] if res_kind == 2 else "ieee")
                            for cfg, is_default in [(default, True)] + [(c, False) for c in kept]:
                                v = Variant(**base, resident=cfg["W_RESIDENT"], block_k=cfg["BLOCK_K"],
                                            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
                                uses = out.setdefault(v, Uses())
                                lst = uses.default_for if is_default else uses.candidate_for
                                if setting not in lst:
                                    lst.append(setting)
    return out


@dataclasses.dataclass
class Usage:
    regs: int | None       # None: not compiled through ptxas (shared memory only)
    stack: int | None
    smem: int
    seconds: float


def shared_memory_only(v: Variant, nonlin=0, lengths=True):
    """(shared memory of ``v``, how it was found) without lowering to LLVM or running ptxas: Triton's
    stages up to TTGIR (the calls triton.compile makes), then the passes with which the LLVM stage
    starts, up to and including the shared-memory allocation, whose result (the module's "ttg.shared")
    is what metadata["shared"] reports. Those passes are Triton internals: where they do not match this
    Triton, the whole LLVM stage runs instead ("llir"). The test compares both with full compiles."""
    from triton._C.libtriton import ir, nvidia, passes
    from triton.backends.nvidia.compiler import get_ptx_version_from_options
    from triton.compiler.compiler import make_backend
    src, target, options = _compile_source(v.kind, _torch_dtype(v.w_dtype), v.H, v.res_kind, v.config(),
                                           v.prec, v.prec_cd, nonlin, lengths)
    backend = make_backend(target)
    options = backend.parse_options(options)
    stages = {}
    backend.add_stages(stages, options, src.language)
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    module = src.make_ir(target, options, backend.get_codegen_implementation(options), backend.get_module_map(),
                         context)
    metadata = {"hash": src.hash(), "target": target, **options.__dict__}
    for ext in ("ttir", "ttgir"):
        module = stages[ext](module, metadata)
    try:
        pm = ir.pass_manager(module.context)
        passes.ttgpuir.add_combine_tensor_select_and_if(pm)
        try:
            passes.ttgpuir.add_allocate_warp_groups(pm, False)     # Triton >= 3.7: (pm, consan)
        except TypeError:
            passes.ttgpuir.add_allocate_warp_groups(pm)
        passes.convert.add_scf_to_cf(pm)
        passes.gluon.add_inliner(pm)
        nvidia.passes.ttgpuir.add_allocate_shared_memory_nv(
            pm, target.arch, get_ptx_version_from_options(options, target.arch))
        pm.run(module, "wcrnn_smem")
        return module.get_int_attr("ttg.shared"), "alloc"
    except (AttributeError, TypeError):
        module = stages["llir"](module, metadata)
        return metadata["shared"], "llir"


def measure_one(v: Variant, full: bool, nonlin=0, lengths=True) -> Usage:
    """Cross-compile one variant for sm_90: through ptxas (registers, stack, shared memory) when ``full``,
    else only as far as its shared memory is known."""
    t0 = time.perf_counter()
    if full:
        ck = cross_compile(v.kind, _torch_dtype(v.w_dtype), v.H, v.res_kind, v.config(), prec=v.prec,
                           prec_cd=v.prec_cd, nonlin=nonlin, lengths=lengths)
        regs, stack, smem = resource_usage(ck)
    else:
        regs = stack = None
        smem, _ = shared_memory_only(v, nonlin, lengths)
    return Usage(regs, stack, smem, time.perf_counter() - t0)


def toolchain_key():
    """What a measurement depends on besides the variant: the Triton and ptxas versions, the environment
    variables Triton keys its own cache on, WCRNN_TRITON_SPLIT_STATE, the kernels' source (Triton's own
    cache key of each JIT function, which covers the helpers they call) and the code that specialises,
    compiles and reads them. Anything else (config selection, comments) may change without invalidating
    the cache."""
    import inspect
    import triton
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler.compiler import get_cache_invalidating_env_vars
    from . import triton_kernels as tk
    h = hashlib.sha256()
    env = sorted(get_cache_invalidating_env_vars().items())
    h.update(f"{triton.__version__} ptxas {get_ptxas(90).version} {env} split {tk.SPLIT_HALF_STATE}".encode())
    h.update(tk._wcrnn_fwd_kernel.cache_key.encode())
    h.update(tk._wcrnn_bwd_kernel.cache_key.encode())
    for fn in (_compile_source, cross_compile, resource_usage, shared_memory_only, measure_one):
        h.update(inspect.getsource(fn).encode())
    return h.hexdigest()[:20]


def default_cache_dir():
    """WCRNN_RESOURCE_CACHE (a directory; empty: no cache), else ~/.cache/wcrnn_kernels."""
    from . import _env
    d = _env.get("WCRNN_RESOURCE_CACHE")
    if d is not None:
        return d or None
    return os.path.join(os.path.expanduser("~"), ".cache", "wcrnn_kernels")


def _cache_entry(v, full, nonlin, lengths):
    return json.dumps([dataclasses.astuple(v), full, nonlin, lengths])


def _worker_init():
    # the workers compile for a GPU: an inherited TRITON_INTERPRET=1 would make the kernels interpreted
    os.environ.pop("TRITON_INTERPRET", None)


def _cost(v: Variant, full: bool):
    # rough relative compile time, to start the slowest first and keep the pool's tail short
    return v.HP * (2 if v.w_dtype == "fp64" or v.res_kind == 2 else 1) * (4 if full else 1)


def measure(variants, full, workers=None, nonlin=0, lengths=True, cache_dir=None):
    """{variant: Usage} for ``variants``; ``full(v)`` says which go through ptxas. Compiles in a pool of
    fresh ("spawn") processes, one per core by default; reuses and extends the cache in ``cache_dir``."""
    variants = list(variants)
    cache, path = {}, None
    if cache_dir:
        path = os.path.join(cache_dir, f"triton-resources-sm90-{toolchain_key()}.json")
        try:
            with open(path) as f:
                cache = json.load(f)
        except (OSError, ValueError):
            cache = {}
    out, todo = {}, []
    for v in variants:
        hit = cache.get(_cache_entry(v, full(v), nonlin, lengths))
        if hit is not None:
            out[v] = Usage(*hit[:3], seconds=0.0)
        else:
            todo.append(v)
    if todo:
        todo.sort(key=lambda v: -_cost(v, full(v)))
        workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
            futs = {pool.submit(measure_one, v, full(v), nonlin, lengths): v for v in todo}
            for f in concurrent.futures.as_completed(futs):
                v = futs[f]
                out[v] = f.result()
                cache[_cache_entry(v, full(v), nonlin, lengths)] = [out[v].regs, out[v].stack, out[v].smem]
        if path:
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(cache, f)
            os.replace(tmp, path)
    return out


def _fmt_settings(settings):
    return ",".join(settings) if len(settings) < len(FP32_SETTINGS) else "any"


def markdown_table(uses, usage, title=""):
    """One row per variant: kernel, H bucket, H % 16, W dtype, PREC, PREC_CD, the fp32 matmul settings
    it serves, residual form, variant, warps, stages, registers, stack, shared memory, default or
    candidate ('-' where only shared memory was measured)."""
    lines = [title, ""] if title else []
    lines += ["| kernel | HP | H%16 | W dtype | PREC | PREC_CD | fp32 setting | residual | variant | warps "
              "| stages | regs | stack B | smem B | default? |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {d: i for i, d in enumerate(DTYPES)}
    for v in sorted(usage, key=lambda v: (v.kind == "bwd", order[v.w_dtype], v.res_kind, v.prec, v.prec_cd,
                                          v.HP, not v.aligned, not uses[v].is_default, v.resident, v.block_k,
                                          v.num_warps, v.num_stages)):
        u, use = usage[v], uses[v]
        settings = use.default_for if use.is_default else use.candidate_for
        cells = [v.kind, v.HP, "0" if v.aligned else "≠0", v.w_dtype, v.prec,
                 v.prec_cd if v.res_kind == 2 else "-", _fmt_settings(settings), RES_NAMES[v.res_kind],
                 v.variant_name, v.num_warps, v.num_stages, "-" if u.regs is None else u.regs,
                 "-" if u.stack is None else u.stack, u.smem,
                 "default" + (" (+cand.)" if use.candidate_for else "") if use.is_default else "candidate"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    """`python -m wcrnn_kernels.triton_resources [--defaults-only] [--no-cache] [--workers N]`: the table of
    every launcher-choosable variant, cross-compiled for sm_90, as markdown on stdout."""
    import argparse
    import triton
    from . import triton_kernels as tk
    ap = argparse.ArgumentParser(prog="python -m wcrnn_kernels.triton_resources", description=main.__doc__)
    ap.add_argument("--defaults-only", action="store_true", help="only the default configs")
    ap.add_argument("--no-cache", action="store_true", help="compile everything again")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)
    uses = launcher_variants()
    chosen = [v for v in uses if uses[v].is_default or not args.defaults_only]
    t0 = time.perf_counter()
    usage = measure(chosen, full=lambda v: uses[v].is_default, workers=args.workers,
                    cache_dir=None if args.no_cache else default_cache_dir())
    n_def = sum(uses[v].is_default for v in usage)
    over = [v for v in usage if usage[v].smem > tk.SMEM_LIMIT]
    spilling = [v for v in usage if uses[v].is_default and usage[v].stack]
    title = (f"Triton {triton.__version__}, sm_90, tanh with lengths: {len(usage)} variants ({n_def} defaults, "
             f"compiled through ptxas; the other {len(usage) - n_def} autotune candidates to their shared "
             f"memory only), {time.perf_counter() - t0:.0f} s. Shared-memory limit {tk.SMEM_LIMIT} B: "
             f"{len(over)} over. Defaults with stack: {len(spilling)}.")
    print(markdown_table(uses, usage, title))


if __name__ == "__main__":
    main()
