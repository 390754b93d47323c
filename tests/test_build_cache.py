"""The first-use build cache (issue 13): one build per (sources, torch, Python, compiler, flags), shared by every
environment and every copy of the sources on the machine, one stderr line with the reason for every compile,
and a cached library whose record does not match is rebuilt, never loaded.

The real library of this test session is reused: the "compile" of the fake-build tests copies it, so they
check the cache's bookkeeping in seconds; the relocation test runs the real loader against the real cache."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from wcrnn_kernels import _build


def _session_library():
    ok, why = _build.load_extension()
    if not ok:
        pytest.skip(f"no compiled library here: {why}")
    info = _build.extension_info()
    if info["origin"] != "jit" or not info["path"]:
        pytest.skip(f"the library was not loaded from the first-use cache here (origin {info['origin']})")
    return info["path"]


def _copy_package(dest):
    """The package and its C++ sources at another absolute path (another environment's copy), without any
    install-time library, so the copy must go through the cache."""
    pkg = os.path.dirname(os.path.abspath(_build.__file__))
    target = os.path.join(dest, "wcrnn_kernels")
    shutil.copytree(pkg, target, ignore=shutil.ignore_patterns("_C*.so", "_C*.pyd", "_C_build.json", "__pycache__"))
    src = _build.source_root()
    if os.path.abspath(src) != os.path.join(pkg, "_csrc"):
        shutil.copytree(src, os.path.join(target, "_csrc"))
    return dest


def _python(code, path, cache, timeout=300):
    env = dict(os.environ, WCRNN_CACHE_DIR=cache, PYTHONPATH=path)
    env.pop("WCRNN_NO_BUILD", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=path)


def test_another_copy_of_the_sources_loads_the_cached_build_without_rebuilding(tmp_path):
    """Before: the cache folder's build.ninja held the first importer's absolute paths, and ninja silently
    recompiled and relinked the library for every other environment or checkout (18-48 s each)."""
    lib = _session_library()
    before = os.stat(lib)
    copy = _copy_package(str(tmp_path / "elsewhere"))
    proc = _python("from wcrnn_kernels import _build; i = _build.extension_info(); print(i['origin'], i['path'])",
                   copy, _build.cache_root())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["jit", lib]
    assert "compiling" not in proc.stderr, proc.stderr
    after = os.stat(lib)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "the cached library was rebuilt"


FAKE_BUILD = textwrap.dedent(r"""
    import os, shutil, sys, time
    from wcrnn_kernels import _build
    real_lib, delay = sys.argv[1], float(sys.argv[2])
    def fake_build(build_dir, name, *, with_cuda, **kw):   # stands in for ninja: copies the real library
        time.sleep(delay)
        os.makedirs(build_dir, exist_ok=True)
        out = os.path.join(build_dir, name + ".so")
        shutil.copyfile(real_lib, out)
        import torch
        torch.ops.load_library(out)
        with open(os.environ["BUILD_LOG"], "a") as fh:
            fh.write("built\n")
        return out
    _build.jit_build_and_load = fake_build
    ok, why = _build.load_extension()
    print(ok, _build.extension_info()["path"])
""")


def _fake(tmp_path, real, cache, delay=0.0):
    code = FAKE_BUILD
    env_log = str(tmp_path / "builds.log")
    copy = str(tmp_path / "pkg")
    if not os.path.isdir(copy):
        _copy_package(copy)
    env = dict(os.environ, WCRNN_CACHE_DIR=cache, PYTHONPATH=copy, BUILD_LOG=env_log)
    env.pop("WCRNN_NO_BUILD", None)
    return subprocess.Popen([sys.executable, "-c", code, real, str(delay)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=copy)


def _finish(p):
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    return out, [ln for ln in err.splitlines() if ln.startswith("wcrnn_kernels: compiling")]


def _builds(tmp_path):
    log = tmp_path / "builds.log"
    return log.read_text().count("built") if log.exists() else 0


def test_one_build_per_key_one_line_per_build_with_its_reason(tmp_path):
    """Three processes start on an empty cache at once: one compiles (one stderr line, with the reason), the
    others wait for it and load its library. Then a record for something else, and a library without its
    record (an interrupted build), are each rebuilt, never loaded, with the reason on the line."""
    real = _session_library()
    cache = str(tmp_path / "cache")
    procs = [_fake(tmp_path, real, cache, delay=1.0) for _ in range(3)]
    results = [_finish(p) for p in procs]
    assert _builds(tmp_path) == 1
    lines = [ln for _, lns in results for ln in lns]
    assert len(lines) == 1 and "no build in the cache for these sources, this torch, Python, compiler and flags" \
        in lines[0], lines
    libs = {out.split()[1] for out, _ in results}
    assert len(libs) == 1 and all(out.startswith("True " + cache) for out, _ in results)
    lib = libs.pop()
    record_path = os.path.join(os.path.dirname(lib), _build.CACHE_RECORD)
    with open(record_path) as fh:
        record = json.load(fh)
    assert len(record["digest"]) == 64 and os.path.basename(lib).startswith("wcrnn_C_" + record["digest"][:16])
    assert not [d for d in os.listdir(os.path.dirname(lib)) if d.startswith("staging-")]

    record["python"] = "2.7"  # a record for something else: never loaded, rebuilt with the reason
    with open(record_path, "w") as fh:
        json.dump(record, fh)
    out, lines = _finish(_fake(tmp_path, real, cache))
    assert _builds(tmp_path) == 2 and len(lines) == 1 and "differs in 'python'" in lines[0], lines

    os.remove(record_path)  # a library without its record (an interrupted build): rebuilt
    out, lines = _finish(_fake(tmp_path, real, cache))
    assert _builds(tmp_path) == 3 and len(lines) == 1 and "no readable build record" in lines[0], lines


def test_branch_alignment_flag_is_probed_per_compiler(monkeypatch, tmp_path):
    """The JCC-erratum padding (-Wa,-mbranches-within-32B-boundaries) is in the flags on x86-64 where the
    compiler takes it, left out where it fails or on another architecture; the flags are part of the cache
    key, so a library built without it is never loaded as one built with it."""
    monkeypatch.setattr(_build, "_BRANCH_ALIGN", {})
    failing = tmp_path / "failing-cxx"
    failing.write_text("#!/bin/sh\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CXX", str(failing))
    monkeypatch.setattr(_build.platform, "machine", lambda: "x86_64")
    assert _build.branch_alignment_flags() == []
    monkeypatch.setattr(_build.platform, "machine", lambda: "aarch64")
    monkeypatch.setenv("CXX", "no-such-compiler-anywhere")
    assert _build.branch_alignment_flags() == []
    assert "no-such-compiler-anywhere" not in _build._BRANCH_ALIGN  # not even probed there
    monkeypatch.setattr(_build.platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("CXX", str(failing))
    key_without = _build.source_hash(_build.source_root(), False)
    monkeypatch.setitem(_build._BRANCH_ALIGN, str(failing), [_build.BRANCH_ALIGN_FLAG])
    assert _build.BRANCH_ALIGN_FLAG in _build.cxx_flags()
    assert _build.source_hash(_build.source_root(), False) != key_without


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64", reason="x86-64 Linux only")
def test_this_machines_gcc_pads_branches():
    # CI's machine (x86-64, gcc 12, binutils >= 2.34): the kernels are built with the padding
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler")
    assert _build.BRANCH_ALIGN_FLAG in _build.cxx_flags()
