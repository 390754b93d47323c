"""The CUDA kernels compile with nvcc from pip where no CUDA toolkit is installed (torch's CUDA wheels bring the
runtime, not the compiler): NVIDIA's CUDA 13 wheels lay out a toolkit in site-packages/nvidia/cu13.

Here a fake layout stands in for the wheels (this machine's torch has no CUDA): discovery, the message that
names each missing package, and the link-time symlink that lets torch's -lcudart find the runtime, which the
wheels ship only as libcudart.so.<N>. The real build was checked with the wheels themselves (nvidia-cuda-nvcc,
-crt, -cccl, nvidia-nvvm 13.0.88, torch 2.14.1+cu130, no toolkit): it compiles, links libcudart.so.13 and
registers the CUDA kernels.
"""
from __future__ import annotations

import os
import sys
import types

import pytest
import torch
from torch.utils import cpp_extension

from wcrnn_kernels import _build


def _fake_wheels(root, parts):
    """site-packages-like `root` with the namespace package nvidia/ and, in nvidia/cu13, the given files."""
    home = root / "nvidia" / "cu13"
    for rel in parts:
        p = home / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("")
    (home / "lib").mkdir(parents=True, exist_ok=True)
    (home / "lib" / "libcudart.so.13").write_text("")
    return home


@pytest.fixture
def site(tmp_path, monkeypatch):
    """An `nvidia` namespace package over tmp_path; torch reporting CUDA 13.0 with no toolkit found."""
    nvidia = types.ModuleType("nvidia")  # only this tree, whatever NVIDIA wheels this environment has
    nvidia.__path__ = [str(tmp_path / "nvidia")]
    monkeypatch.setitem(sys.modules, "nvidia", nvidia)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    monkeypatch.delenv("WCRNN_NO_CUDA", raising=False)
    monkeypatch.setattr(_build, "cuda_sources", lambda root: ["chain_fwd.cu"])
    return tmp_path


ALL = [path for path, _ in _build.PIP_CUDA_PARTS]


def test_nvcc_from_pip_is_found_and_used(site):
    home = _fake_wheels(site, ALL)
    assert _build.pip_cuda_home("13.0") == str(home)
    assert _build.cuda_home() == (str(home), True)
    ok, why = _build.cuda_build_decision("/src")
    assert ok and why.startswith(f"nvcc from pip at {home}/bin/nvcc"), why


def test_a_toolkit_wins_over_pip(site, tmp_path_factory):
    _fake_wheels(site, ALL)
    toolkit = tmp_path_factory.mktemp("cuda")
    (toolkit / "bin").mkdir()
    (toolkit / "bin" / "nvcc").write_text("")
    cpp_extension.CUDA_HOME = str(toolkit)  # restored by the fixture's monkeypatch
    assert _build.cuda_home() == (str(toolkit), False)


def test_each_missing_wheel_is_named_with_its_pin(site):
    _fake_wheels(site, ["bin/nvcc", "include/cuda_runtime.h", "include/nv/target"])
    ok, why = _build.cuda_build_decision("/src")
    assert not ok
    assert "pip install 'nvidia-cuda-crt==13.0.*' 'nvidia-nvvm==13.0.*'" in why, why
    assert "nvidia-cuda-cccl" not in why


def test_no_toolkit_and_no_pip_nvcc_says_how_to_get_one(site):
    ok, why = _build.cuda_build_decision("/src")
    assert not ok and "nvcc not found" in why
    assert "pip install 'nvidia-cuda-nvcc==13.0.*' 'nvidia-cuda-crt==13.0.*'" in why, why


def test_libcudart_link_symlink_only_where_the_unversioned_name_is_missing(site, tmp_path_factory):
    home = _fake_wheels(site, ALL)
    scratch = tmp_path_factory.mktemp("build")
    flags = _build.cudart_link_flags(str(home), str(scratch))
    link = scratch / "cudart_link" / "libcudart.so"
    assert flags == [f"-L{link.parent}"]
    assert os.readlink(link) == str(home / "lib" / "libcudart.so.13")
    assert _build.cudart_link_flags(str(home), str(scratch)) == flags  # a rebuild replaces the link
    (home / "lib" / "libcudart.so").write_text("")
    assert _build.cudart_link_flags(str(home), str(scratch)) == []


def test_the_build_sees_the_pip_toolkit_only_while_it_builds(site):
    home = _fake_wheels(site, ALL)
    with _build._CudaHome(str(home)):
        assert cpp_extension.CUDA_HOME == str(home)
        assert cpp_extension._join_cuda_home("bin", "nvcc") == str(home / "bin" / "nvcc")
    assert cpp_extension.CUDA_HOME is None
