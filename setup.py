"""Build script: the pure-Python package always installs; the compiled kernels are added when possible.

* torch importable in the build environment (``pip install --no-build-isolation .``, or ``python setup.py
  develop``): the ``wcrnn_C`` library is compiled now, as the extension module ``wcrnn_kernels._C`` - the C++
  CPU kernels always, plus ``csrc/cuda/*.cu`` when torch has CUDA, nvcc is found (a CUDA toolkit, or NVIDIA's
  pip wheels in site-packages/nvidia/cu<major>: ``_build.cuda_home``) and ``WCRNN_NO_CUDA`` is unset
  (archs from ``WCRNN_CUDA_ARCH``, default "8.0;9.0+PTX"). A record of the torch / Python / source hash it was
  built for is written beside it (``_C_build.json``); at run time a library whose record does not match is
  never loaded.
* torch not importable (pip's default build isolation: torch is deliberately not a build requirement, see
  pyproject.toml), ``WCRNN_NO_BUILD=1``, or a failed compile: the package installs without the library and
  ``wcrnn_kernels._build`` compiles it on first use into a cache.

Either way the C++/CUDA sources are shipped inside the package (``wcrnn_kernels/_csrc``) so the first-use
build works from a wheel too. Sources, flags and the hash come from ``wcrnn_kernels/_build.py`` (loaded by
path: importing the package would import torch).
"""
import glob
import importlib.util
import json
import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")


def _load_build_helpers():
    spec = importlib.util.spec_from_file_location("_wcrnn_build", os.path.join(HERE, "wcrnn_kernels", "_build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_build = _load_build_helpers()


class BuildPyWithSources(build_py):
    """Also copy csrc/ into the built package as wcrnn_kernels/_csrc (the first-use build compiles it)."""

    def run(self):
        super().run()
        dest = os.path.join(self.build_lib, "wcrnn_kernels", "_csrc")
        for path in glob.glob(os.path.join(CSRC, "**", "*"), recursive=True):
            if os.path.isfile(path) and path.endswith((".cpp", ".h", ".hpp", ".cu", ".cuh")):
                target = os.path.join(dest, os.path.relpath(path, CSRC))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(path, target)


def _say(msg):
    print(f"wcrnn_kernels setup: {msg}", file=sys.stderr)


def _extensions():
    """([extension], {cmdclass}) when torch is importable here, else ([], {})."""
    if _build._env.get("WCRNN_NO_BUILD"):
        _say("WCRNN_NO_BUILD is set: installing without compiled kernels")
        return [], {}
    if not os.path.isfile(os.path.join(CSRC, "wcrnn_ops.cpp")):
        _say("no csrc/ here: installing without compiled kernels")
        return [], {}
    try:
        import torch  # noqa: F401
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        _say("torch is not importable in this build environment: installing the pure-Python package; the "
             "kernels compile on first use (or install with `pip install --no-build-isolation .`)")
        return [], {}

    with_cuda, why = _build.cuda_build_decision(CSRC)
    _say(f"compiling the C++ kernels{' and the CUDA kernels' if with_cuda else ''} "
         f"(CUDA: {why})")
    link_args = _build.ld_flags()
    if with_cuda:
        home, from_pip = _build.cuda_home()
        if from_pip:  # nvcc from NVIDIA's wheels: this build process uses their toolkit tree
            from torch.utils import cpp_extension
            cpp_extension.CUDA_HOME = home
        link_args = link_args + _build.cudart_link_flags(home, os.path.join(HERE, "build"))
    # setuptools wants source paths relative to setup.py
    sources = [os.path.relpath(p, HERE) for p in _build.cpp_sources(CSRC)]
    compile_args = {"cxx": _build.cxx_flags()}
    if with_cuda:
        sources += [os.path.relpath(p, HERE) for p in _build.cuda_sources(CSRC)]
        compile_args["nvcc"] = _build.nvcc_flags()
        os.environ["TORCH_CUDA_ARCH_LIST"] = _build.cuda_arch_list()
    ext_cls = CUDAExtension if with_cuda else CppExtension
    ext = ext_cls("wcrnn_kernels._C", sources, include_dirs=[CSRC], extra_compile_args=compile_args,
                  extra_link_args=link_args)
    record = dict(_build.build_record(CSRC, with_cuda), cuda_decision=f"at install time: {why}")

    class BuildExtWithRecord(BuildExtension):
        """Compile; on success write the build record beside the library; on failure install without it."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # noqa: BLE001 - a failed compile must not fail the install
                _say(f"compiling the kernels failed ({type(e).__name__}: {e}); installing without them. "
                     "They will be compiled on first use, or the 'torch' backend runs instead.")
                return
            out_dir = os.path.dirname(self.get_ext_fullpath(ext.name))
            with open(os.path.join(out_dir, _build.BUILD_RECORD), "w") as fh:
                json.dump(record, fh, indent=1)

    return [ext], {"build_ext": BuildExtWithRecord}


ext_modules, cmdclass = _extensions()
cmdclass["build_py"] = BuildPyWithSources
setup(ext_modules=ext_modules, cmdclass=cmdclass)
