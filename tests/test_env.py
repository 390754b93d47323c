"""The package's environment variables: read in one module (wcrnn_kernels/_env.py), documented in one table
(docs/design.md section 11), and nothing else in the package reads a WCRNN_* variable on its own."""
from __future__ import annotations

import pathlib
import re

import pytest

from wcrnn_kernels import _env

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "wcrnn_kernels"
NAME = re.compile(r"\bWCRNN_[A-Z0-9_]+\b")


def _package_sources():
    yield from sorted(PKG.rglob("*.py"))
    for pattern in ("*.cpp", "*.h", "*.cu", "*.cuh"):
        yield from sorted((ROOT / "csrc").rglob(pattern))


def _read_names(path):
    """WCRNN_* names the file reads from the environment (os.environ / getenv), not macros or prose."""
    text = path.read_text()
    reads = re.findall(r"(?:environ(?:\.get)?\s*[\[(]|getenv\s*\(|_env\.(?:get|flag)\s*\()\s*\"(WCRNN_[A-Z0-9_]+)\"", text)
    return set(reads)


def test_every_variable_read_is_in_the_table_and_the_design_doc():
    design = (ROOT / "docs" / "design.md").read_text()
    table = design[design.index("## 11."):design.index("## 12.")]
    read = {}
    for path in _package_sources():
        for name in _read_names(path):
            read.setdefault(name, []).append(str(path.relative_to(ROOT)))
    assert read, "found no environment reads at all: the pattern is broken"
    missing = {n: where for n, where in read.items() if n not in _env.VARIABLES}
    assert not missing, f"read but not in wcrnn_kernels/_env.py VARIABLES: {missing}"
    undocumented = [n for n in _env.VARIABLES if n not in table]
    assert not undocumented, f"not in docs/design.md section 11: {undocumented}"
    unused = [n for n in _env.VARIABLES if n not in read]
    assert not unused, f"in the table but read nowhere: {unused}"


def test_python_code_reads_them_through_env_only():
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "_env.py":
            continue
        for m in re.finditer(r"(?:environ(?:\.get)?\s*[\[(]|getenv\s*\()\s*\"(WCRNN_[A-Z0-9_]+)\"", path.read_text()):
            offenders.append(f"{path.relative_to(ROOT)}: {m.group(1)}")
    assert not offenders, "read os.environ directly instead of through wcrnn_kernels._env:\n" + "\n".join(offenders)


def test_unknown_names_are_refused(monkeypatch):
    with pytest.raises(KeyError, match="WCRNN_NOPE"):
        _env.get("WCRNN_NOPE")
    monkeypatch.setenv("WCRNN_TRITON_AUTOTUNE", "0")
    assert _env.flag("WCRNN_TRITON_AUTOTUNE", True) is False
    monkeypatch.setenv("WCRNN_TRITON_AUTOTUNE", "")
    assert _env.flag("WCRNN_TRITON_AUTOTUNE", True) is True
