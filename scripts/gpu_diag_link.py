"""Why does formatting an integer in a TORCH_CHECK message of the wcrnn_C library crash on the GPU machine?

Run 2 (a14b0b0, scripts/gpu_diag_errors.py) found every error message of the library that formats an integer
dying with SIGSEGV inside std::ostream::_M_insert<long>, in frames that cuda-gdb attributes to libstdc++
internals (std::codecvt<char16_t>::do_unshift) *inside wcrnn_C.so*; messages made only of strings raise
normally, and torch's own errors raise normally. Hypothesis: that build links a static copy of libstdc++ into
the library, whose locale facet ids differ from the process's libstdc++.so.

This prints what the built library defines and needs, what the CUDA toolkit's lib64 offers, then relinks the
same object files with variants of the link line and probes each variant in a fresh process (the CPU op with
a bad res_kind: an integer in the message, no GPU needed)."""
from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PROBE = r"""
import sys, torch
torch.ops.load_library(sys.argv[1])
u = torch.randn(2, 3, 8); x0 = torch.randn(3, 8); w = torch.randn(8, 8); r = torch.randn(8); g = torch.rand(8)
try:
    torch.ops.wcrnn_C.chain_fwd(u, x0, w, r, g, None, 7, 0, False)
    print("NO ERROR")
except Exception as e:
    print("RAISED", str(e).splitlines()[0][:120])
"""


def sh(cmd, timeout=120):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)
    return (r.stdout + r.stderr).strip()


def probe(lib):
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(PROBE)
    r = subprocess.run([sys.executable, f.name, lib], capture_output=True, text=True, timeout=120)
    last = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
    return f"exit {r.returncode}: {last}"


def main():
    from wcrnn_kernels import _build
    ok, why = _build.load_extension()
    info = _build.extension_info()
    lib = info["path"]
    print("library:", lib)
    if not lib:
        sys.exit(f"no JIT-built library to inspect ({why})")
    bdir = os.path.dirname(lib)
    print("-- NEEDED:", sh(f"readelf -d {lib} | grep NEEDED | sed 's/.*Shared library://' | tr -d '\\n'"))
    print("-- std:: symbols the library defines (dynamic):", sh(f"nm -DC --defined-only {lib} | grep -c ' std::'"))
    print(sh(f"nm -DC --defined-only {lib} | grep -E 'codecvt|locale|num_put|ios_base' | head -8"))
    print("-- libstdc++ text in the library (all symbols):", sh(f"nm -C {lib} | grep -cE 'codecvt|ios_base::Init'"))
    print("-- CUDA lib64 cudart:", sh("ls -la ${CUDA_HOME:-/usr/local/cuda}/lib64/ | grep -iE 'cudart|stdc' | head"))
    print("-- libstdc++ the system has:", sh("ls -la /usr/lib/x86_64-linux-gnu/libstdc++.so* 2>&1 | head -3"))
    print("-- libstdc++ copies under the Python environment:",
          sh(f"find {os.path.dirname(os.path.dirname(sys.executable))} / -maxdepth 6 -name 'libstdc++.so*' "
             f"-not -path '/proc/*' 2>/dev/null | sort -u | head"))
    print("-- gcc's link spec, libstdc++ lines:", sh("c++ -dumpspecs | grep -iE 'stdc|static' | head -5"))
    print("-- c++ -print-file-name=libstdc++.so:", sh("c++ -print-file-name=libstdc++.so"),
          "| libstdc++.a:", sh("c++ -print-file-name=libstdc++.a"))
    ninja_file = os.path.join(bdir, "build.ninja")
    if not os.path.exists(ninja_file):
        # builds are staged in a private directory that is removed once the library is in the cache
        # (_build._compile_into_cache): no objects to relink, so only the library as built is probed
        as_built = probe(lib)
        print(f"-- {ninja_file} is not kept (staged build): no relink variants; probe of the library as built:",
              as_built)
        check_raises(as_built)
        return
    ninja = open(ninja_file).read()
    ldflags = re.search(r"^ldflags = (.*)$", ninja, re.M).group(1)
    print("-- ldflags:", ldflags)
    objs = sorted(glob.glob(os.path.join(bdir, "*.o")))
    print("-- objects:", [os.path.basename(o) for o in objs])
    as_built = probe(lib)
    print("-- probe of the library as built:", as_built)
    cudart_so = sorted(glob.glob(os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "lib64",
                                              "libcudart.so*")))
    import torch
    tl = os.path.join(os.path.dirname(torch.__file__), "lib")
    rt = glob.glob(os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "cu*", "lib",
                                "libcudart.so*"))
    print("-- torch's cudart:", rt)
    variants = {"as-built": ldflags,
                "no-fopenmp": ldflags.replace("-fopenmp", ""),
                "shared-libstdc++": ldflags + " -shared-libgcc -Wl,-Bdynamic -lstdc++"}
    if cudart_so:
        variants["cudart-so-path"] = re.sub(r"-lcudart\b", cudart_so[0], ldflags)
    if rt:
        variants["torch-cudart"] = re.sub(r"-lcudart\b", rt[0], ldflags)
    variants["no-cudart"] = re.sub(r"-L\S*cuda\S*lib64\s+-lcudart\b", "", ldflags)
    # a private, consistent copy of libstdc++ (hidden) instead of whatever mix the default link makes
    variants["static-private-libstdc++"] = ldflags + " -static-libstdc++ -static-libgcc -Wl,--exclude-libs,ALL"
    variants["Bsymbolic"] = ldflags + " -Wl,-Bsymbolic"
    out = tempfile.mkdtemp()
    for name, flags in variants.items():
        target = os.path.join(out, f"{name}.so")
        cmd = f"c++ {' '.join(shlex.quote(o) for o in objs)} {flags} -o {target}"
        msg = sh(cmd, timeout=300)
        if not os.path.exists(target):
            print(f"-- variant {name}: link failed: {msg[-300:]}")
            continue
        n = sh(f"nm -C {target} | grep -cE 'codecvt|ios_base::Init'")
        print(f"-- variant {name}: libstdc++ symbols {n}; probe {probe(target)}")
        if name == "as-built":
            print("   link map of the static libstdc++ pieces:",
                  sh(f"{cmd} -Wl,--trace 2>&1 | grep -iE 'libstdc|cudart|\\.a' | head -8"))
    check_raises(as_built)


def check_raises(as_built):
    """The library as built must raise, with the number in its message."""
    if not as_built.startswith("exit 0: RAISED") or "got 7" not in as_built:
        sys.exit(f"the library as built does not raise a complete error message: {as_built}")


if __name__ == "__main__":
    main()
