"""The drop-in ``lockledger_client.FileLock`` against a real service and real processes
that lock with plain ``filelock``: registration, exclusion both ways, a service that is
down, slow or refuses, a killed holder, a force clear, reentrancy. Every wait is bounded."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterator, List

import filelock
import pytest

import lockledger_client
from lockledger_client import FileLock, LockLedger

from support import Holder, Service, lock_state, wait_until


@pytest.fixture
def ll(service: Service) -> LockLedger:
    return service.client()


def events_of(ll: LockLedger, owner: str, field: str) -> List[Dict[str, Any]]:
    return ll.history(owner, field=field or "main")


def warnings_in(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "lockledger_client" and r.levelno >= logging.WARNING]


# --------------------------------------------------------------------------- registration


def test_registers_and_shows_as_library_holder(service: Service, ll: LockLedger,
                                               owner: str) -> None:
    path = service.lock_path(owner, "messages")

    def save_local() -> Dict[str, Any]:
        with FileLock(path, client=ll) as lock:
            assert lock.is_locked and lock.registered
            assert (lock.owner, lock.field, lock.namespace) == (owner, "messages",
                                                                 "conversation")
            seen = lock_state(ll, owner, "messages")
            seen["lock_token"] = lock.token
            seen["fence"] = lock.check_fence()
            seen["lost"] = lock.lost
            return seen

    seen = save_local()
    assert (seen["state"], seen["kind"], seen["holder"], seen["operation"]) == (
        "held", "library", "chat-app", "save_local")
    assert seen["pid"] == os.getpid()
    assert isinstance(seen["lock_token"], int) and seen["token"] == seen["lock_token"]
    assert seen["fence"] is True and seen["lost"] is False
    assert seen["file"] == "%s_messages.lock" % owner
    # released: unregistered first, then the flock went
    lk = lock_state(ll, owner, "messages")
    assert lk["state"] == "free", lk
    names = [(e["event"], e["token"]) for e in events_of(ll, owner, "messages")]
    assert names[:2] == [("released", seen["token"]), ("acquired", seen["token"])]


def test_operation_argument_decorator_and_configure(service: Service, ll: LockLedger,
                                                    owner: str, restore_settings: Any) -> None:
    path = service.lock_path(owner, "memory")
    # configure() sets the client every FileLock without client= uses
    lockledger_client.configure(client=service.client(holder="chat-worker-2"))
    with FileLock(path, operation="summarise memory") as lock:
        lk = lock_state(ll, owner, "memory")
        assert (lk["holder"], lk["operation"], lk["token"]) == (
            "chat-worker-2", "summarise memory", lock.token)

    ops: List[str] = []

    @FileLock(path)
    def update_memory() -> None:
        ops.append(lock_state(ll, owner, "memory")["operation"])

    update_memory()
    assert ops == ["update_memory"]

    def stream_reply() -> Iterator[str]:  # a Flask streaming generator
        with FileLock(path):
            yield lock_state(ll, owner, "memory")["operation"]

    assert list(stream_reply()) == ["stream_reply"]


def test_env_configures_the_default_client(service: Service, owner: str,
                                           holders: Callable[..., Holder]) -> None:
    # lock_holder.py dropin uses LOCKLEDGER_URL only
    h = holders("dropin", service.lock_path(owner, "all"), url=service.base_url,
                operation="import_conversation")
    held = h.report()
    lk = lock_state(service.client(), owner, "all")
    assert (lk["state"], lk["kind"], lk["pid"], lk["operation"], lk["token"]) == (
        "held", "library", h.pid, "import_conversation", held["token"])
    assert h.release()["event"] == "released"
    assert lock_state(service.client(), owner, "all")["state"] == "free"


def test_main_lock_artefacts_and_documents(service: Service, ll: LockLedger,
                                           owner: str) -> None:
    with FileLock(service.lock_path(owner, ""), client=ll) as main:
        assert main.field == "" and main.registered
        assert lock_state(ll, owner, "")["kind"] == "library"
    owner_ = owner.replace("-", "_") + "_x"  # an owner id with "_" in it
    with FileLock(service.lock_path(owner_, "artefacts"), client=ll) as art:
        assert (art.owner, art.field) == (owner_, "artefacts")
        lk = lock_state(ll, owner_, "artefacts")
        assert (lk["state"], lk["kind"], lk["token"]) == ("held", "library", art.token)
        assert ll.status(owner_)["locks_status"]["artefacts"] is True
    doc = os.path.join(service.locks_dir, "%s-indices.lock" % owner)
    with FileLock(doc, client=ll) as d:
        assert (d.namespace, d.owner, d.field) == ("document", owner, "indices")
        assert d.registered
        locks = ll._request("GET", "/api/v1/locks/%s" % owner,
                            query={"namespace": "document"})["locks"]
        held = [lk for lk in locks if lk["field"] == "indices"]
        assert held and (held[0]["state"], held[0]["kind"], held[0]["token"]) == (
            "held", "library", d.token)


def test_unconfigured_key_and_other_directories_stay_plain(
        service: Service, ll: LockLedger, owner: str, tmp_path: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lockledger_client"):
        # a key the service is not configured for: not registered, still reported
        with FileLock(service.lock_path(owner, "summaries"), client=ll) as lock:
            assert (lock.field, lock.registered, lock.token) == ("summaries", False, None)
            st = ll.status(owner)
            assert st["locks_status"]["summaries"] is True and st["any_locked"] is True
            lk = lock_state(ll, owner, "summaries")
            assert (lk["state"], lk["kind"], lk["configured"], lk["pid"]) == (
                "held", "external", False, os.getpid())
        # a per-user index lock outside the service's locks directory
        index = tmp_path / "user1" / "index_all.lock"
        index.parent.mkdir()
        with FileLock(str(index), timeout=30, client=ll) as idx:
            assert idx.is_locked and not idx.registered
    assert warnings_in(caplog) == []


def test_locks_dir_setting(service: Service, ll: LockLedger, owner: str, tmp_path: Any,
                           restore_settings: Any) -> None:
    lockledger_client.configure(locks_dir=service.locks_dir)
    with FileLock(service.lock_path(owner, "memory"), client=ll) as lock:
        assert lock.registered
    other = tmp_path / "locks"
    other.mkdir()
    with FileLock(str(other / ("%s_memory.lock" % owner)), client=ll) as lock:
        assert not lock.registered  # a directory called locks, but not the service's
    lockledger_client.configure(enabled=False)
    with FileLock(service.lock_path(owner, "memory"), client=ll) as lock:
        assert lock.is_locked and not lock.registered


# --------------------------------------------------------------------------- exclusion


def test_plain_filelock_process_excludes_the_drop_in_both_ways(
        service: Service, ll: LockLedger, owner: str,
        holders: Callable[..., Holder]) -> None:
    path = service.lock_path(owner, "messages")
    # 1. we hold with the drop-in: a plain filelock process cannot get it
    lock = FileLock(path, client=ll)
    with lock:
        h = holders("plain", path, try_timeout=0.3)
        assert h.report()["event"] == "timeout"
        # and one that waits gets it once we let go
        waiter = holders("plain", path, try_timeout=10)
        time.sleep(0.2)
        assert waiter.proc.poll() is None
    got = waiter.report()
    assert (got["event"], got["pid"]) == ("held", waiter.pid)
    # 2. the plain process holds: the drop-in times out, and lockledger names the holder
    lk = lock_state(ll, owner, "messages")
    assert (lk["state"], lk["kind"], lk["pid"]) == ("held", "external", waiter.pid)
    started = time.monotonic()
    with pytest.raises(filelock.Timeout):
        lock.acquire(timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 3
    assert not lock.is_locked and lock.token is None
    # 3. it lets go: the drop-in gets it and registers
    threading.Timer(0.2, waiter.release).start()
    with lock.acquire(timeout=10):
        assert lock.registered
        lk = lock_state(ll, owner, "messages")
        assert (lk["kind"], lk["pid"]) == ("library", os.getpid())
    assert not lock.is_locked
    assert lock_state(ll, owner, "messages")["state"] == "free"


def test_two_drop_in_objects_in_one_process_exclude_each_other(
        service: Service, ll: LockLedger, owner: str) -> None:
    path = service.lock_path(owner, "memory")
    a, b = FileLock(path, client=ll), FileLock(path, client=ll)
    with a:
        with pytest.raises(filelock.Timeout):
            b.acquire(timeout=0.1)
        assert b.token is None and a.registered
    with b:
        assert b.registered and lock_state(ll, owner, "memory")["token"] == b.token


# --------------------------------------------------------------------------- reentrancy


def test_reentrant_like_filelock(service: Service, ll: LockLedger, owner: str) -> None:
    path = service.lock_path(owner, "messages")
    lock = FileLock(path, client=ll)
    with lock:
        token = lock.token
        assert lock.lock_counter == 1
        with lock:  # the same object again: one more level, no new registration
            assert lock.lock_counter == 2 and lock.token == token
        assert lock.lock_counter == 1 and lock.registered and lock.token == token
        assert lock_state(ll, owner, "messages")["state"] == "held"
    assert lock.lock_counter == 0 and not lock.is_locked and lock.token is None
    events = [e["event"] for e in events_of(ll, owner, "messages")]
    assert events == ["released", "acquired"]

    lock.acquire()
    lock.acquire()
    lock.acquire()
    assert lock.lock_counter == 3
    lock.release(force=True)  # all levels at once
    assert not lock.is_locked and not lock.registered
    assert lock_state(ll, owner, "messages")["state"] == "free"

    # thread-local by default, like filelock: another thread waits for it
    got: List[bool] = []
    with lock:
        t = threading.Thread(target=lambda: got.append(_try(lock, 0.2)))
        t.start()
        t.join(5)
    assert got == [False]
    shared = FileLock(path, client=ll, thread_local=False)
    with shared:
        t = threading.Thread(target=lambda: got.append(_try_keep(shared)))
        t.start()
        t.join(5)
        assert shared.lock_counter == 2 and shared.registered
        shared.release()
    assert got[-1] is True and not shared.is_locked and not shared.registered


def _try(lock: FileLock, timeout: float) -> bool:
    try:
        lock.acquire(timeout=timeout)
    except filelock.Timeout:
        return False
    lock.release()
    return True


def _try_keep(lock: FileLock) -> bool:
    lock.acquire(timeout=1)
    return True


def test_filelock_attributes_pass_through(service: Service, ll: LockLedger,
                                          owner: str) -> None:
    path = service.lock_path(owner, "memory")
    lock = FileLock(path, 5, client=ll)
    assert lock.lock_file == path
    assert lock.timeout == 5
    lock.timeout = 7
    assert lock.filelock.timeout == 7
    assert isinstance(lock.filelock, filelock.BaseFileLock)
    assert lock.is_thread_local() is True  # any other filelock attribute
    with pytest.raises(filelock.Timeout):
        with FileLock(path, client=ll):
            lock.acquire(blocking=False)
    assert "unlocked" in repr(lock)


# --------------------------------------------------------------------------- no service


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_service_down_still_locks_and_warns_once(service: Service, owner: str,
                                                 holders: Callable[..., Holder],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    down = LockLedger("http://127.0.0.1:%d" % _free_port(), timeout=5)
    path = service.lock_path(owner, "messages")
    with caplog.at_level(logging.DEBUG, logger="lockledger_client"):
        for _ in range(3):
            started = time.monotonic()
            with FileLock(path, client=down) as lock:
                assert lock.is_locked and lock.token is None and not lock.registered
                assert lock.check_fence() is True and lock.lost is False
                # still the real kernel lock
                h = holders("plain", path, try_timeout=0.1)
                assert h.report()["event"] == "timeout"
            assert time.monotonic() - started < 3
    warned = warnings_in(caplog)
    assert len(warned) == 1, warned
    assert "cannot register" in warned[0] and "logged once" in warned[0]
    # the service that is up sees it as an external holder meanwhile
    with FileLock(path, client=down):
        lk = lock_state(service.client(), owner, "messages")
        assert (lk["state"], lk["kind"], lk["pid"]) == ("held", "external", os.getpid())


def test_slow_service_costs_at_most_the_registration_timeout(
        owner: str, tmp_path: Any, restore_settings: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    # A socket that accepts connections and never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        slow = LockLedger("http://127.0.0.1:%d" % silent.getsockname()[1], timeout=30)
        lockledger_client.configure(register_timeout=0.3)
        locks = tmp_path / "locks"
        locks.mkdir()
        path = str(locks / ("%s_memory.lock" % owner))
        with caplog.at_level(logging.WARNING, logger="lockledger_client"):
            started = time.monotonic()
            with FileLock(path, client=slow) as lock:
                assert lock.is_locked and not lock.registered
            first = time.monotonic() - started
            started = time.monotonic()
            for _ in range(5):  # within retry_after: not tried again
                with FileLock(path, client=slow):
                    pass
            again = time.monotonic() - started
        assert 0.25 <= first < 1.5, first
        assert again < 0.5, again
        assert len(warnings_in(caplog)) == 1
    finally:
        silent.close()


def test_refused_registration_still_locks_and_warns_once(
        service: Service, owner: str, tmp_path: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    # A locks directory that is not the service's: /proc/locks cannot show this pid
    # holding the service's file, so it answers 409 not_holding.
    locks = tmp_path / "locks"
    locks.mkdir()
    client = service.client()
    with caplog.at_level(logging.WARNING, logger="lockledger_client"):
        for _ in range(3):
            with FileLock(str(locks / ("%s_memory.lock" % owner)), client=client) as lock:
                assert lock.is_locked and lock.token is None
    warned = warnings_in(caplog)
    assert len(warned) == 1 and "refused" in warned[0], warned


# --------------------------------------------------------------------------- dead holders


def test_killed_holder_is_stale_then_cleared(service_no_expire: Service, owner: str,
                                             holders: Callable[..., Holder]) -> None:
    service = service_no_expire
    ll = service.client()
    h = holders("dropin", service.lock_path(owner, "messages"), url=service.base_url,
                operation="send_message")
    held = h.report()
    lk = lock_state(ll, owner, "messages")
    assert (lk["state"], lk["kind"], lk["pid"], lk["token"]) == (
        "held", "library", h.pid, held["token"])
    h.proc.send_signal(signal.SIGKILL)
    h.proc.wait(timeout=5)
    file = "%s_messages.lock" % owner
    assert wait_until(lambda: ll.get_stale_locks(owner) == [file], 3.0)
    lk = lock_state(ll, owner, "messages")
    assert (lk["state"], lk["stale_reason"], lk["pid"]) == ("stale", "holder_dead", h.pid)
    assert not ll.is_any_lock_held(owner)  # the kernel dropped its flock
    out = ll.ensure_locks_cleared(owner)
    assert (out["success"], out["cleared"]) == (True, [file])
    assert lock_state(ll, owner, "messages")["state"] == "free"


def test_killed_holder_is_reconciled_by_itself(owner: str,
                                               holders: Callable[..., Holder]) -> None:
    service = Service({"LOCKLEDGER_RECONCILE_PERIOD_MS": "200"})
    try:
        ll = service.client()
        h = holders("dropin", service.lock_path(owner, "memory"), url=service.base_url)
        held = h.report()
        assert lock_state(ll, owner, "memory")["kind"] == "library"
        h.kill()
        assert wait_until(lambda: lock_state(ll, owner, "memory")["state"] == "free", 5.0), \
            lock_state(ll, owner, "memory")
        ends = [e["event"] for e in events_of(ll, owner, "memory")
                if e["token"] == held["token"] and e["event"] != "acquired"]
        assert ends == ["reconciled"]
    finally:
        service.close()


# --------------------------------------------------------------------------- force clear


def test_force_clear_is_seen_as_lost(service: Service, ll: LockLedger, owner: str,
                                     caplog: pytest.LogCaptureFixture) -> None:
    path = service.lock_path(owner, "messages")
    lock = FileLock(path, client=ll)
    with caplog.at_level(logging.WARNING, logger="lockledger_client"):
        with lock:
            token = lock.token
            assert token is not None and lock.check_fence() and not lock.lost
            out = service.admin().force_clear_all_locks(owner, "test: a hung save")
            assert out["cleared"] == ["%s_messages.lock" % owner], out
            assert lock.lost is True
            assert lock.check_fence() is False
            assert "force-cleared" in (lock.lost_reason or "")
            assert ll.fence_check(owner, "messages", token)["current"] is False
            # the kernel lock is still this process's: nobody else gets in meanwhile
            assert lock.is_locked
            with pytest.raises(filelock.Timeout):
                FileLock(path, client=ll).acquire(timeout=0.1)
    assert not lock.is_locked
    events = [e["event"] for e in events_of(ll, owner, "messages") if e["token"] == token]
    assert "force_cleared" in events
    # the next hold gets a newer token, and is current
    with lock:
        assert not lock.lost and lock.token is not None and lock.token > token
        assert lock.check_fence()
