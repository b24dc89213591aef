"""Leases, the streaming guard and the five operations, against a real lockledger
service (one per module; one owner per test). Every wait is bounded by a deadline."""

from __future__ import annotations

import gc
import http.server
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from lockledger_client import LeaseLost, LockBusy, LockLedger, LockLedgerError

from support import Service, lock_state, read_json_line, wait_until


@pytest.fixture(autouse=True)
def quiet_lost_leases() -> Iterator[None]:
    # Lost-lease warnings are expected in several tests; keep the output readable.
    logger = logging.getLogger("lockledger_client")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.fixture
def ll(service: Service) -> LockLedger:
    return service.client()


@pytest.fixture
def kept() -> Iterator[List[Any]]:
    """Leases released at the end of the test, whatever happened."""
    leases: List[Any] = []
    yield leases
    for lease in leases:
        lease.release()


def assert_released_soon(ll: LockLedger, owner: str, timeout: float = 2.0) -> None:
    ok = wait_until(lambda: not ll.is_any_lock_held(owner), timeout)
    assert ok, "locks of %s still held after %.1f s: %s" % (
        owner, timeout, ll.status(owner)["locks_status"])


def raw_acquire(service: Service, owner: str, field: str, ttl_ms: int) -> Dict[str, Any]:
    """A lease taken with plain urllib and never renewed (a hung client)."""
    req = urllib.request.Request(
        "%s/api/v1/locks/%s/%s/acquire" % (service.base_url, owner, field),
        data=json.dumps({"holder": "hung-client", "operation": "hang",
                         "ttl_ms": ttl_ms}).encode(),
        method="POST", headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=10) as r:
        out: Dict[str, Any] = json.load(r)
        return out


# --------------------------------------------------------------------------- leases


def test_context_manager_acquires_renews_and_releases(ll: LockLedger, owner: str) -> None:
    with ll.lock(owner, "messages", "send_message", ttl_ms=600) as lease:
        assert isinstance(lease.token, int)
        assert lease.field == "messages"
        assert lease.file == "%s_messages.lock" % owner
        lk = lock_state(ll, owner, "messages")
        assert (lk["state"], lk["kind"], lk["holder"], lk["operation"]) == (
            "held", "lease", "chat-app", "send_message")
        assert lk["pid"] == os.getpid()
        assert lk["token"] == lease.token
        first_expiry = lease.expires_at
        assert wait_until(lambda: lease.renewals >= 2, 2.0), "no renewals"
        assert lease.expires_at != first_expiry
        assert lease.check_fence()
    assert lease.released
    assert not lease.lost
    assert not ll.is_any_lock_held(owner)
    events = [(e["event"], e["token"]) for e in ll.history(owner, field="messages")]
    assert ("acquired", lease.token) in events
    assert ("released", lease.token) in events
    assert events[0] == ("released", lease.token)  # newest first
    assert lease.release() is False  # idempotent


def test_renewal_keeps_a_600ms_lease_alive_for_2s(ll: LockLedger, owner: str) -> None:
    with ll.lock(owner, "messages", "long_stream", ttl_ms=600) as lease:
        time.sleep(2.0)
        assert not lease.lost, lease.lost_reason
        assert lease.renewals >= 5
        lk = lock_state(ll, owner, "messages")
        assert (lk["state"], lk["token"]) == ("held", lease.token)
        assert lease.check_fence()
    events = [e["event"] for e in ll.history(owner)]
    assert "expired" not in events
    assert events[0] == "released"


def test_exception_inside_with_releases(ll: LockLedger, owner: str) -> None:
    with pytest.raises(ZeroDivisionError):
        with ll.lock(owner, "memory", "save_local") as lease:
            assert ll.is_any_lock_held(owner)
            1 / 0
    assert lease.released
    assert not ll.is_any_lock_held(owner)
    assert ll.history(owner)[0]["event"] == "released"


def test_busy_lock_raises_lock_busy_with_the_holder(service: Service, ll: LockLedger,
                                                     owner: str) -> None:
    other = service.client(holder="other-worker")
    with other.lock(owner, "messages", "send_message") as held:
        started = time.monotonic()
        with pytest.raises(LockBusy) as info:
            ll.lock(owner, "messages", "save_local", wait_ms=150)
        waited = time.monotonic() - started
        assert 0.14 <= waited < 3.0
        err = info.value
        assert (err.status, err.code) == (409, "busy")
        assert err.holder["holder"] == "other-worker"
        assert err.holder["operation"] == "send_message"
        assert err.holder["pid"] == os.getpid()
        assert err.holder["token"] == held.token
        assert err.holder["kind"] == "lease"
        assert isinstance(err, LockLedgerError)


def test_main_lock_aliases_and_bad_input(ll: LockLedger, owner: str) -> None:
    for spelling in ("", None, "main"):
        with ll.lock(owner, spelling, "load_conversation") as lease:
            assert lease.field == ""
            assert lease.file == "%s_.lock" % owner
            assert lock_state(ll, owner, "")["state"] == "held"
            assert lease.check_fence()
    with pytest.raises(LockLedgerError) as info:
        ll.lock(owner, "no_such_field", "x", wait_ms=0)
    assert (info.value.status, info.value.code) == (400, "invalid_id")
    with pytest.raises(LockLedgerError) as info:
        ll.lock("../etc", "messages", "x", wait_ms=0)
    assert info.value.status == 400
    down = LockLedger("http://127.0.0.1:9", timeout=2)
    with pytest.raises(LockLedgerError) as info:
        down.status(owner)
    assert (info.value.code, info.value.status) == ("unreachable", None)
    assert info.value.unavailable


def test_dropped_lease_is_released(ll: LockLedger, owner: str,
                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lockledger_client"):
        ll.lock(owner, "memory", "leaky_thread", ttl_ms=3000)  # no reference kept
        gc.collect()
        assert_released_soon(ll, owner, 1.5)
    assert "dropped without release" in caplog.text


def test_child_process_killed_with_sigkill_loses_its_lease(service: Service, ll: LockLedger,
                                                           owner: str) -> None:
    code = (
        "import json, time\n"
        "from lockledger_client import LockLedger\n"
        "ll = LockLedger(%r, holder='child')\n"
        "lease = ll.lock(%r, 'messages', 'send_message', ttl_ms=30000)\n"
        "print(json.dumps({'token': lease.token, 'lease_id': lease.lease_id}), flush=True)\n"
        "time.sleep(60)\n" % (service.base_url, owner))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
    try:
        grant = read_json_line(child)
        lk = lock_state(ll, owner, "messages")
        assert (lk["state"], lk["pid"], lk["token"]) == ("held", child.pid, grant["token"])
        killed = time.monotonic()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=5)
        freed = wait_until(lambda: lock_state(ll, owner, "messages")["state"] == "free", 1.5)
        ended_in = time.monotonic() - killed
        assert freed, "lease of a killed client still there after %.2f s: %s" % (
            ended_in, lock_state(ll, owner, "messages"))
        assert ended_in < 1.5
        assert not ll.is_any_lock_held(owner)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=5)
        assert child.stdout is not None
        child.stdout.close()
    events = [(e["event"], e["token"]) for e in ll.history(owner)]
    closing = [ev for ev, tok in events if tok == grant["token"] and ev != "acquired"]
    assert len(closing) == 1, events
    assert closing[0] in ("expired", "reconciled", "cleared")
    # and the lock can be taken again at once
    with ll.lock(owner, "messages", "after_crash", wait_ms=0) as lease:
        assert lease.token > grant["token"]


# --------------------------------------------------------------------------- streams

FIELDS = ["messages", "message_operations"]


def both_held(ll: LockLedger, owner: str) -> bool:
    st = ll.status(owner)["locks_status"]
    return all(st[f] for f in FIELDS)


def test_lock_order_is_fixed() -> None:
    assert LockLedger.lock_order(["messages", "main", "all", "messages"]) == [
        "", "all", "messages"]
    assert LockLedger.lock_order("memory") == ["memory"]
    assert LockLedger.lock_order(None) == [""]


def test_released_on_normal_end(ll: LockLedger, owner: str) -> None:
    seen: List[bool] = []

    def body() -> Iterator[str]:
        for i in range(3):
            seen.append(both_held(ll, owner))
            yield "chunk %d" % i

    chunks = list(ll.locked_stream(owner, FIELDS, "send_message", body()))
    assert chunks == ["chunk 0", "chunk 1", "chunk 2"]
    assert seen == [True, True, True]
    assert_released_soon(ll, owner)


def test_released_on_exception(ll: LockLedger, owner: str) -> None:
    def body() -> Iterator[str]:
        yield "first"
        raise RuntimeError("model failed")

    stream = ll.locked_stream(owner, FIELDS, "send_message", body())
    assert next(stream) == "first"
    assert both_held(ll, owner)
    with pytest.raises(RuntimeError):
        next(stream)
    assert_released_soon(ll, owner)


def test_released_on_close_mid_stream(ll: LockLedger, owner: str) -> None:
    finally_saw_lock: List[bool] = []

    def body() -> Iterator[str]:
        try:
            i = 0
            while True:
                yield "chunk %d" % i
                i += 1
        finally:  # runs on GeneratorExit, while the locks are still held
            finally_saw_lock.append(both_held(ll, owner))

    stream = ll.locked_stream(owner, FIELDS, "send_message", body())
    assert [next(stream) for _ in range(3)] == ["chunk 0", "chunk 1", "chunk 2"]
    stream.close()  # type: ignore[attr-defined]  # what werkzeug does on disconnect
    assert finally_saw_lock == [True]
    assert_released_soon(ll, owner)


def test_released_on_cancel_event(ll: LockLedger, owner: str) -> None:
    cancel = threading.Event()
    produced: List[int] = []

    def body() -> Iterator[int]:
        for i in range(1000):
            produced.append(i)
            yield i
            time.sleep(0.01)

    got: List[int] = []
    errors: List[BaseException] = []

    def consume() -> None:
        try:
            for chunk in ll.locked_stream(owner, FIELDS, "send_message", body(),
                                          cancel=cancel):
                got.append(chunk)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    assert wait_until(lambda: len(got) >= 3, 5.0)
    assert both_held(ll, owner)
    cancel.set()
    t.join(timeout=5)
    assert not t.is_alive(), "stream did not stop after cancel"
    assert errors == []
    assert len(got) < 1000
    assert len(got) <= len(produced)
    assert_released_soon(ll, owner)


def test_factory_gets_the_leases(ll: LockLedger, owner: str) -> None:
    tokens: Dict[str, int] = {}

    def body(leases: Dict[str, Any]) -> Iterator[str]:
        tokens.update({f: lease.token for f, lease in leases.items()})
        yield "ok" if all(lease.check_fence() for lease in leases.values()) else "fenced"

    out = list(ll.locked_stream(owner, FIELDS, "send_message", body))
    assert out == ["ok"]
    assert sorted(tokens) == sorted(FIELDS)
    assert_released_soon(ll, owner)


def test_busy_stream_raises_and_holds_nothing(service: Service, ll: LockLedger,
                                              owner: str) -> None:
    other = service.client(holder="other-stream")
    closed: List[bool] = []

    def body() -> Iterator[str]:
        try:
            yield "never"
        finally:
            closed.append(True)

    with other.lock(owner, "messages", "send_message"):
        stream = ll.locked_stream(owner, FIELDS, "send_message", body(), wait_ms=100)
        with pytest.raises(LockBusy):
            next(stream)
        # message_operations (locked first in sorted order) was given back
        assert not ll.status(owner)["locks_status"]["message_operations"]
    assert_released_soon(ll, owner)


def test_lost_lease_stops_the_stream(service: Service, ll: LockLedger, owner: str) -> None:
    def body() -> Iterator[str]:
        while True:
            yield "x"
            time.sleep(0.02)

    stream = ll.locked_stream(owner, ["messages"], "send_message", body(), ttl_ms=600)
    next(stream)
    service.admin().force_clear_all_locks(owner, "test: revoke a stream")
    with pytest.raises(LeaseLost):
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            next(stream)
    assert_released_soon(ll, owner)


def test_bad_on_lost_is_refused_at_once(ll: LockLedger, owner: str) -> None:
    with pytest.raises(ValueError):
        ll.locked_stream(owner, FIELDS, "send_message", iter(()), on_lost="maybe")


# --------------------------------------------------------------------------- the five operations


def test_wait_for_lock_release(ll: LockLedger, owner: str, kept: List[Any]) -> None:
    lease = ll.lock(owner, "messages", "send_message")
    kept.append(lease)
    started = time.monotonic()
    assert not ll.wait_for_lock_release(owner, timeout=0.3, poll=0.05)
    assert time.monotonic() - started < 2.0
    # a free field does not wait
    assert ll.wait_for_lock_release(owner, ["memory"], timeout=0.3)
    timer = threading.Timer(0.3, lease.release)
    timer.start()
    try:
        started = time.monotonic()
        assert ll.wait_for_lock_release(owner, ["messages"], timeout=5)
        assert time.monotonic() - started < 3.0
    finally:
        timer.cancel()
    assert not ll.is_any_lock_held(owner)


def test_force_clear_needs_admin_and_fences_the_old_holder(service: Service, ll: LockLedger,
                                                           owner: str,
                                                           kept: List[Any]) -> None:
    lease = ll.lock(owner, "messages", "send_message", ttl_ms=600)
    kept.append(lease)
    with pytest.raises(LockLedgerError) as info:
        ll.force_clear_all_locks(owner, "not an admin")
    assert info.value.status in (401, 403)
    assert ll.is_any_lock_held(owner)
    assert not lease.lost

    out = service.admin().force_clear_all_locks(owner, "test: stream hung")
    assert out["success"], out
    assert out["cleared"] == ["%s_messages.lock" % owner]
    assert not ll.is_any_lock_held(owner)
    assert wait_until(lambda: lease.lost, 2.0), "renewal did not notice"
    assert not lease.check_fence()
    with pytest.raises(LeaseLost):
        lease.raise_if_lost()
    events = ll.history(owner, event="force_cleared")
    assert len(events) == 1
    assert events[0]["token"] == lease.token
    assert "admin" in events[0]["actor"]
    # the next holder gets a newer token; releasing the old lease is harmless
    with ll.lock(owner, "messages", "retry", wait_ms=0) as fresh:
        assert fresh.token > lease.token
        assert lease.release() is False
        assert fresh.check_fence()
    # nothing left to clear
    assert service.admin().force_clear_all_locks(owner, "again")["cleared"] == []


def test_cleanup_on_cancellation_releases_this_clients_leases(service: Service,
                                                              ll: LockLedger, owner: str,
                                                              kept: List[Any]) -> None:
    mine = [ll.lock(owner, f, "send_message") for f in ("messages", "message_operations")]
    kept.extend(mine)
    elsewhere = ll.lock(owner + "-other", "messages", "x")
    kept.append(elsewhere)
    other_client = service.client(holder="other-client")
    theirs = other_client.lock(owner, "memory", "save_memory")
    kept.append(theirs)

    out = ll.cleanup_on_cancellation(owner)
    assert sorted(out["released"]) == sorted(
        "%s_%s.lock" % (owner, f) for f in ("messages", "message_operations"))
    for lease in mine:
        assert lease.released
        assert lease.lost
    # another owner's lease, and another client's lease, are untouched
    assert elsewhere.active
    assert theirs.active
    assert [s["field"] for s in out["skipped"]] == ["memory"]
    st = ll.status(owner)["locks_status"]
    assert (st["messages"], st["message_operations"], st["memory"]) == (False, False, True)
    theirs.release()
    assert not ll.is_any_lock_held(owner)
    # idempotent
    assert ll.cleanup_on_cancellation(owner)["released"] == []


# --------------------------------------------------------------------------- no automatic expiry


def test_crashed_library_holder_is_stale_but_not_held(service_no_expire: Service,
                                                      owner: str) -> None:
    service = service_no_expire
    ll = service.client()
    hold = subprocess.Popen(
        [str(service.exe), "--storage", service.storage, "hold", owner, "memory",
         "--operation", "save_memory"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        env=service.env)
    try:
        held = read_json_line(hold)
        assert held["event"] == "held"
        lk = lock_state(ll, owner, "memory")
        assert (lk["state"], lk["kind"]) == ("held", "library")
        assert ll.is_any_lock_held(owner)
        hold.send_signal(signal.SIGKILL)
        hold.wait(timeout=5)
    finally:
        if hold.poll() is None:
            hold.kill()
            hold.wait(timeout=5)
        assert hold.stdout is not None
        hold.stdout.close()
    file = "%s_memory.lock" % owner
    assert wait_until(lambda: ll.get_stale_locks(owner) == [file], 3.0)
    assert lock_state(ll, owner, "memory")["stale_reason"] == "holder_dead"
    # the kernel dropped the flock with the process: nothing holds it
    assert not ll.is_any_lock_held(owner)
    assert ll.wait_for_lock_release(owner, timeout=1)
    out = ll.cleanup_on_cancellation(owner)
    assert (out["released"], out["cleared"]) == ([], [file])
    assert ll.get_stale_locks(owner) == []


def test_get_stale_locks_lists_an_expired_lease(service_no_expire: Service,
                                                owner: str) -> None:
    service = service_no_expire
    ll = service.client()
    assert ll.get_stale_locks(owner) == []
    grant = raw_acquire(service, owner, "messages", ttl_ms=300)
    file = "%s_messages.lock" % owner
    assert wait_until(lambda: ll.get_stale_locks(owner) == [file], 3.0)
    lk = lock_state(ll, owner, "messages")
    assert (lk["state"], lk["stale_reason"], lk["token"]) == (
        "stale", "lease_expired", grant["token"])
    assert lk["clearable"]
    # still taken: the service keeps the flock until someone clears it
    assert ll.is_any_lock_held(owner)
    assert not ll.wait_for_lock_release(owner, timeout=0.2)
    with pytest.raises(LockBusy):
        ll.lock(owner, "messages", "x", wait_ms=50)
    # a stale token is refused, the right one clears
    out = ll.ensure_locks_cleared(owner, {"messages": grant["token"] + 1})
    assert out["cleared"] == []
    out = ll.ensure_locks_cleared(owner, {"messages": grant["token"]})
    assert out["cleared"] == [file]
    assert ll.get_stale_locks(owner) == []
    assert not ll.is_any_lock_held(owner)


def test_renewed_lease_does_not_go_stale(service_no_expire: Service, owner: str) -> None:
    ll = service_no_expire.client()
    with ll.lock(owner, "memory", "save_memory", ttl_ms=400) as lease:
        time.sleep(1.0)
        assert ll.get_stale_locks(owner) == []
        assert not lease.lost


# --------------------------------------------------------------------------- tokens on the wire


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request with ``{}`` and records its method, path and token."""

    seen: List[Tuple[str, str, str]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        type(self).seen.append((self.command, self.path.split("?")[0],
                                self.headers.get("Authorization") or ""))
        body = b'{"tokens": {}, "locks": [], "events": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Tuple[str, List[Tuple[str, str, str]]]]:
    _Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield "http://127.0.0.1:%d" % server.server_address[1], _Recorder.seen
    server.shutdown()
    server.server_close()


def test_admin_token_is_sent_only_on_admin_calls(
        recorder: Tuple[str, List[Tuple[str, str, str]]]) -> None:
    url, seen = recorder
    # No user token: routine calls carry no token at all (not the admin one).
    ll = LockLedger(url, admin_token="ADMIN-SECRET", timeout=5)
    ll.status("c1")
    ll.ensure_locks_cleared("c1")
    ll.fence_check("c1", "messages", 3)
    ll.history("c1")
    ll.register("c1", "messages", "op")
    ll.unregister("r1")
    ll.force_clear("c1", {"messages": 3}, "test")
    ll.sql("select 1")
    assert [tok for _, _, tok in seen] == [""] * 6 + ["Bearer ADMIN-SECRET"] * 2
    assert [p for _, p, _ in seen][-2:] == ["/force_clear_locks/c1", "/api/v1/sql"]
    # With a user token: routine calls carry it, admin calls the admin token.
    seen.clear()
    ll = LockLedger(url, token="USER", admin_token="ADMIN-SECRET", timeout=5)
    ll.status("c1")
    ll.force_clear("c1", {"messages": 3}, "test")
    assert [tok for _, _, tok in seen] == ["Bearer USER", "Bearer ADMIN-SECRET"]
    # An admin call without an admin token sends the user token (and gets 403).
    seen.clear()
    LockLedger(url, token="USER", timeout=5).sql("select 1")
    assert [tok for _, _, tok in seen] == ["Bearer USER"]
