"""Shared by the SDK suite: records which of the SDK's operations the tests call.

Every public method of the SDK's operation classes is wrapped, once, before any test runs, so
that each call adds "Group.method" (the reference's names: `Assets.create`,
`WebhooksWebhooks.list_events`) to a set. The wrapper only records: the SDK's own method runs
unchanged with the same arguments. `test_sdk_platforms.py` checks, after every other test of
the directory, that all 54 operations were called.
"""

import functools
import inspect

import pytest
from credytapi.operations import _operations

CALLED = set()

# The test that checks what was called runs after all others, wherever its file sorts.
LAST = "runs_after_all_sdk_tests"


def _recorded(name, method):
    @functools.wraps(method)
    def recording(self, *args, **kwargs):
        CALLED.add(name)
        return method(self, *args, **kwargs)

    return recording


def _wrap_operations():
    for class_name, klass in vars(_operations).items():
        if not (inspect.isclass(klass) and class_name.endswith("Operations")):
            continue
        group = class_name[: -len("Operations")]
        for name, method in list(vars(klass).items()):
            if inspect.isfunction(method) and not name.startswith("_"):
                setattr(klass, name, _recorded(f"{group}.{name}", method))


_wrap_operations()


def pytest_configure(config):
    config.addinivalue_line("markers", f"{LAST}: run this test after every other one")


def pytest_collection_modifyitems(session, config, items):
    last = [item for item in items if item.get_closest_marker(LAST)]
    items[:] = [item for item in items if not item.get_closest_marker(LAST)] + last


@pytest.fixture
def sdk_calls():
    """The "Group.method" names of every SDK operation called so far in this session."""
    return CALLED
