"""Shared test set-up: PtyPy marker handling and MindSpore's device."""
import importlib.util

import pytest

HAVE_PTYPY = importlib.util.find_spec('ptypy') is not None
PTYPY_REASON = ("PtyPy is not installed: it is not on PyPI; install it from its upstream "
                "(https://github.com/ptycho/ptypy, see README) to run the PtyPy-facing tests")


def pytest_collection_modifyitems(config, items):
    if HAVE_PTYPY:
        return
    skip = pytest.mark.skip(reason=PTYPY_REASON)
    for item in items:
        if 'ptypy' in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope='session', autouse=True)
def graph_mode_on_cpu():
    """Everything runs compiled (graph mode) on the CPU, as the engine does there."""
    from ptypy_npu.solver import select_device
    select_device('CPU')
