"""Fixtures shared by the test suite (importable helpers live in helpers.py)."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

# A fresh inductor cache for each test session (unless the caller names one), as CI's fresh machine has: a warm
# cache from earlier runs reuses code compiled from an older fake kernel, and hid a stride mismatch that only a
# cold compile met (test_compile.py's inductor test, lean layer, on CI).
_OWN_INDUCTOR_CACHE = None
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _OWN_INDUCTOR_CACHE = tempfile.mkdtemp(prefix="wcrnn-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _OWN_INDUCTOR_CACHE


def pytest_sessionfinish(session, exitstatus):
    if _OWN_INDUCTOR_CACHE is not None:
        shutil.rmtree(_OWN_INDUCTOR_CACHE, ignore_errors=True)


@pytest.fixture
def poison_empty(monkeypatch):
    """Fill every uninitialised float tensor allocated from Python with NaN.

    A kernel or launcher that forgets to write part of an output then yields NaN instead of whatever the
    allocator happened to hold, and the comparison fails loudly.
    """
    def poisoned(fn):
        def wrapper(*args, **kwargs):
            t = fn(*args, **kwargs)
            if t.is_floating_point() or t.is_complex():
                t.fill_(float("nan"))
            return t
        return wrapper

    monkeypatch.setattr(torch, "empty", poisoned(torch.empty))
    monkeypatch.setattr(torch, "empty_like", poisoned(torch.empty_like))
    monkeypatch.setattr(torch.Tensor, "new_empty", poisoned(torch.Tensor.new_empty))
    yield


def pytest_generate_tests(metafunc):
    """A test taking a `target` argument gets one row per target that can run in this process (helpers.py:
    TARGETS), none for the others; a test may narrow them with @pytest.mark.targets("cpp", ...)."""
    if "target" in metafunc.fixturenames:
        from helpers import target_params
        marker = metafunc.definition.get_closest_marker("targets")
        dtypes = metafunc.definition.get_closest_marker("target_dtypes")
        metafunc.parametrize("target", target_params(marker.args if marker else None, dtypes.args if dtypes else ()))


def pytest_collection_modifyitems(config, items):
    """Rows of a `target` test with no target that runs here (pytest's "got empty parameter set" skips) are
    deselected, not reported as skips: the summary line names the targets that were not covered, once."""
    empty = [item for item in items if "target" in getattr(item, "fixturenames", ()) and
             any("empty parameter set" in str(m.kwargs.get("reason", "")) for m in item.iter_markers("skip"))]
    if empty:
        config.hook.pytest_deselected(items=empty)
        drop = set(map(id, empty))
        items[:] = [item for item in items if id(item) not in drop]


def pytest_terminal_summary(terminalreporter):
    """Once per run that collected a target-parametrised test: which targets it covered, why not the rest."""
    import helpers
    # under pytest-xdist the workers collect: the controller works the status out for the summary itself
    if helpers._STATUS or getattr(terminalreporter.config.option, "numprocesses", None):
        for line in helpers.target_summary():
            terminalreporter.write_line(line)


def pytest_configure(config):
    config.addinivalue_line("markers", "targets(*names): the targets a test taking `target` runs on")
    config.addinivalue_line("markers", "target_dtypes(*dtypes): only the targets whose backend runs these dtypes")
