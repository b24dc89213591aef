"""Two chat-app processes on two "hosts" (two lockledger services, each with its own
storage and locks directory) sharing one PostgreSQL registry: the drop-in FileLock's
registration is the grant across hosts, so the processes never hold one conversation's
lock at once although their flocks are on different files; a refused acquire gives its
flock back and raises ``filelock.Timeout``.

A real throwaway PostgreSQL (``scripts/pg.sh``, installed by ``scripts/setup.sh
--tests``), real service binaries, real child processes; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Tuple

import filelock
import pytest

import lockledger_client
from lockledger_client import FileLock

from support import Service

ROOT = Path(__file__).resolve().parents[2]
PG = str(ROOT / "scripts" / "pg.sh")


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="lockledger-pytest-pg-")
    os.rmdir(d)  # pg.sh start makes it (it must be absent or empty)
    out = subprocess.run([PG, "start", d], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, "cannot start PostgreSQL (scripts/setup.sh --tests " \
        "installs it): %s" % out.stderr[-2000:]
    url = out.stdout.strip().splitlines()[-1]
    yield url
    subprocess.run([PG, "stop", d], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def two_hosts(postgres: str) -> Iterator[Tuple[Service, Service]]:
    a = Service({"LOCKLEDGER_DATABASE": postgres})
    b = Service({"LOCKLEDGER_DATABASE": postgres})
    yield a, b
    a.close()
    b.close()


def app(service: Service, counter: str, markers: str, rounds: int) -> "subprocess.Popen[str]":
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("dist_counter.py")), service.base_url,
         service.locks_dir, counter, markers, str(rounds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_app_processes_on_two_hosts_never_hold_one_lock_at_once(
        two_hosts: Tuple[Service, Service], tmp_path: Path) -> None:
    a, b = two_hosts
    assert a.locks_dir != b.locks_dir
    counter = str(tmp_path / "counter")
    Path(counter).write_text("0")
    rounds = 25
    procs = [app(s, counter, str(tmp_path), rounds) for s in (a, b, a, b)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["overlaps"] for r in results) == 0, results
    assert int(Path(counter).read_text()) == 4 * rounds, "lost updates: two holders overlapped"
    # Every grant is in the one shared history, whichever service is asked.
    for s in (a, b):
        events = lockledger_client.LockLedger(s.base_url).history(owner="dist1", limit=1000)
        rows = events["events"] if isinstance(events, dict) else events
        acquired = [e for e in rows if e["event"] == "acquired"]
        released = [e for e in rows if e["event"] == "released"]
        assert len(acquired) == 4 * rounds and len(released) == 4 * rounds
        tokens = sorted(e["token"] for e in acquired)
        assert len(set(tokens)) == len(tokens), "tokens repeat"


def test_a_refused_acquire_gives_the_flock_back_and_raises_timeout(
        two_hosts: Tuple[Service, Service], restore_settings: object) -> None:
    a, b = two_hosts
    path_a = os.path.join(a.locks_dir, "dist2_messages.lock")
    path_b = os.path.join(b.locks_dir, "dist2_messages.lock")
    lockledger_client.configure(a.base_url, locks_dir=a.locks_dir, distributed=True)
    held = FileLock(path_a, operation="stream")
    held.acquire(timeout=5)
    first_token = held.token
    try:
        assert held.registered and first_token is not None
        # The other host's process: its own flock is free, the grant is not.
        # (owner and field given: this test's settings name host A's locks directory)
        other = FileLock(path_b, operation="send", owner="dist2", field="messages",
                         client=lockledger_client.LockLedger(b.base_url))
        t0 = time.monotonic()
        with pytest.raises(filelock.Timeout):
            other.acquire(timeout=0.6)
        assert 0.4 < time.monotonic() - t0 < 10
        assert not other.is_locked
        # Its flock was given back: a plain filelock takes it at once.
        probe = filelock.FileLock(path_b)
        probe.acquire(timeout=0)
        probe.release()
    finally:
        held.release()
    # Freed on host A: host B's process gets it now.
    other = FileLock(path_b, operation="send", owner="dist2", field="messages",
                     client=lockledger_client.LockLedger(b.base_url))
    other.acquire(timeout=10)
    assert other.registered and other.token is not None and other.token > first_token
    other.release()
