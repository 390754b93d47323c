"""The compiled library uses the process's C++ runtime (libstdc++.so.6), never a static copy of its own.

Found on the first GPU machine (Ubuntu 24.04, g++ 13.3, torch 2.11): every error message of the wcrnn_C library
that formatted an integer killed the process with SIGSEGV inside std::ostream::_M_insert<long>, in libstdc++
code that had been linked into wcrnn_C.so itself (benchmarks/results/h200-a14b0b0-run2). Two copies of the
runtime in one process disagree about locale facets; strings still format, numbers do not. Here the same
situation is made on purpose: a library directory that offers -lstdc++ only as the archive libstdc++.a. On this
machine the static copy drops the number from the message instead of crashing.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from wcrnn_kernels import _build

SOURCE = textwrap.dedent("""
    #include <cstring>
    #include <sstream>
    static char buf[64];
    extern "C" const char* fmt_long(long v) {
      std::ostringstream s;
      s << "got " << v;
      std::strncpy(buf, s.str().c_str(), sizeof(buf) - 1);
      return buf;
    }
""")

PROBE = textwrap.dedent("""
    import ctypes, sys
    import torch  # loads the process's libstdc++.so.6 first, as in every real use
    lib = ctypes.CDLL(sys.argv[1])
    lib.fmt_long.restype = ctypes.c_char_p
    print(lib.fmt_long(7).decode())
""")

CXX = os.environ.get("CXX", "c++")


def _archive_only_dir(tmp_path):
    """A directory whose only libstdc++ is the static archive: put first on -L, -lstdc++ then links it."""
    if sys.platform != "linux" or shutil.which(CXX) is None:
        pytest.skip("needs Linux and a C++ compiler")
    archive = subprocess.run([CXX, "-print-file-name=libstdc++.a"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(archive) or not os.path.exists(archive):
        pytest.skip(f"{CXX} has no libstdc++.a to simulate the static fallback with")
    d = tmp_path / "archive_only"
    d.mkdir()
    (d / "libstdc++.a").symlink_to(archive)
    return str(d)


def _link(tmp_path, name, flags):
    src = tmp_path / "fmt.cpp"
    src.write_text(SOURCE)
    out = tmp_path / f"{name}.so"
    r = subprocess.run([CXX, "-shared", "-fPIC", "-O2", str(src), "-o", str(out)] + flags, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    return str(out)


def _probe(lib):
    r = subprocess.run([sys.executable, "-c", PROBE, lib], capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout.strip()


def test_link_flags_keep_the_shared_runtime_where_only_the_archive_is_offered(tmp_path):
    archive_only = _archive_only_dir(tmp_path)
    good = _link(tmp_path, "good", _build.ld_flags() + ["-L" + archive_only])
    assert _build.static_cxx_runtime(good) is None
    assert _probe(good) == (0, "got 7")


def test_a_static_runtime_copy_is_detected_and_breaks_number_formatting(tmp_path):
    """Positive control: the same link without the library's flags takes libstdc++.a; the detector names a
    runtime function the library defines, and formatting an integer no longer works in a torch process."""
    archive_only = _archive_only_dir(tmp_path)
    bad = _link(tmp_path, "bad", ["-L" + archive_only])
    assert _build.static_cxx_runtime(bad) is not None
    rc, out = _probe(bad)
    assert (rc, out) != (0, "got 7"), "a static libstdc++ copy formatted the number correctly here"
    print(f"static copy: exit {rc}, output {out!r}")


def test_static_runtime_detector_on_ordinary_files(tmp_path):
    plain = tmp_path / "not_elf.so"
    plain.write_bytes(b"not an ELF file")
    assert _build.static_cxx_runtime(str(plain)) is None
    assert _build.static_cxx_runtime(str(tmp_path / "missing.so")) is None
    assert _build.static_cxx_runtime(sys.executable) is None  # an ELF that imports the runtime, if any


def test_the_loaded_library_uses_the_shared_runtime():
    ok, why = _build.load_extension()
    if not ok:
        pytest.skip(f"no compiled library here: {why}")
    path = _build.extension_info()["path"]
    if path is None:
        pytest.skip("the library was loaded before this process looked (no path recorded)")
    assert _build.static_cxx_runtime(path) is None
