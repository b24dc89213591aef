"""Shared fixtures: a real lockledger service per test module (temporary storage, port
0), real child processes holding locks, and bounded waits.

Run from the repository root with the package installed in the virtualenv:

    .venv/bin/python -m pytest tests/python -q

``LOCKLEDGER_BIN`` names the service binary (default ``target/debug/lockledger``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

import lockledger_client
from lockledger_client import config as ll_config

from support import Holder, Service, binary


def pytest_report_header(config: Any) -> List[str]:
    return ["lockledger binary: %s" % binary(),
            "lockledger_client from: %s" % Path(lockledger_client.__file__).parent]


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    s = Service()
    yield s
    s.close()


@pytest.fixture(scope="module")
def service_no_expire() -> Iterator[Service]:
    """Expired leases and dead holders stay stale until cleared (no automatic expiry,
    no periodic reconciliation)."""
    s = Service({"LOCKLEDGER_AUTO_EXPIRE": "0", "LOCKLEDGER_RECONCILE_PERIOD_MS": "0"})
    yield s
    s.close()


@pytest.fixture
def owner(request: Any) -> str:
    """One owner id per test, so the tests of a module never see each other's locks."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name.replace("test_", "", 1))
    return "t-" + name[:60].strip("_")


@pytest.fixture
def restore_settings() -> Iterator[ll_config.Settings]:
    """Restores the drop-in FileLock's process-wide settings after the test."""
    s = ll_config.settings()
    saved = dict(vars(s))
    yield s
    vars(s).clear()
    vars(s).update(saved)


@pytest.fixture
def holders() -> Iterator[Callable[..., Holder]]:
    """Starts holder processes; every one is killed at the end of the test."""
    started: List[Holder] = []

    def start(kind: str, path: str, **kw: Any) -> Holder:
        h = Holder(kind, path, **kw)
        started.append(h)
        return h

    yield start
    for h in started:
        h.close()

