"""Tests of clients/python/lockledger_client.py against a real lockledger service.

Run from the repository root (builds nothing):

    LOCKLEDGER_BIN=target/debug/lockledger python3 -m unittest discover -s tests/python -v

Each test class starts its own service on a temporary storage directory and port 0.
Every wait is bounded by a deadline.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIR = ROOT / "clients" / "python"
sys.path.insert(0, str(CLIENT_DIR))

from lockledger_client import (  # noqa: E402
    LeaseLost,
    LockBusy,
    LockLedger,
    LockLedgerError,
)


# Lost-lease warnings are expected in several tests; keep the test output readable.
logging.getLogger("lockledger_client").setLevel(logging.ERROR)


def binary() -> Path:
    env = os.environ.get("LOCKLEDGER_BIN")
    path = Path(env) if env else ROOT / "target" / "debug" / "lockledger"
    return path.resolve()


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Polls ``pred`` until it is true or ``timeout`` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class ServiceTestCase(unittest.TestCase):
    """Starts one lockledger service per test class (temp storage, port 0)."""

    service_env: Dict[str, str] = {}

    base_url: str
    admin_token: str
    storage: str
    proc: subprocess.Popen

    @classmethod
    def setUpClass(cls) -> None:
        exe = binary()
        if not exe.is_file():
            raise RuntimeError(
                "lockledger binary not found at %s: build it (cargo build) or set "
                "LOCKLEDGER_BIN" % exe)
        cls.storage = tempfile.mkdtemp(prefix="lockledger-pytest-")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        env.update(cls.service_env)
        out_path = os.path.join(cls.storage, "service.out")
        cls._out = open(out_path, "wb")
        cls._err = open(os.path.join(cls.storage, "service.err"), "wb")
        cls.proc = subprocess.Popen(
            [str(exe), "--storage", cls.storage, "serve", "--bind", "127.0.0.1:0"],
            stdout=cls._out, stderr=cls._err, stdin=subprocess.DEVNULL, env=env)
        url = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and url is None:
            if cls.proc.poll() is not None:
                break
            with open(out_path, "rb") as f:
                for line in f.read().decode(errors="replace").splitlines():
                    if "listening on " in line:
                        url = line.split("listening on ", 1)[1].strip()
            if url is None:
                time.sleep(0.02)
        if url is None:
            cls._stop_service()
            raise RuntimeError("lockledger did not start: %s" % cls._service_log())
        cls.base_url = url
        with open(os.path.join(cls.storage, "admin-token")) as f:
            cls.admin_token = f.read().strip()

    @classmethod
    def _service_log(cls) -> str:
        try:
            with open(os.path.join(cls.storage, "service.err"), "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return "(no log)"

    @classmethod
    def _stop_service(cls) -> None:
        if cls.proc.poll() is None:
            cls.proc.terminate()
            try:
                cls.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                cls.proc.kill()
                cls.proc.wait(timeout=5)
        cls._out.close()
        cls._err.close()

    @classmethod
    def tearDownClass(cls) -> None:
        cls._stop_service()
        shutil.rmtree(cls.storage, ignore_errors=True)

    def setUp(self) -> None:
        # One owner per test, so tests of a class never see each other's locks.
        self.owner = "t-%s" % self._testMethodName.replace("test_", "")[:60]
        self.ll = self.client()
        self._leases: List[Any] = []

    def tearDown(self) -> None:
        for lease in self._leases:
            lease.release()

    def client(self, **kw: Any) -> LockLedger:
        kw.setdefault("timeout", 10)
        return LockLedger(self.base_url, **kw)

    def admin(self) -> LockLedger:
        return self.client(admin_token=self.admin_token, holder="test-admin")

    def keep(self, lease: Any) -> Any:
        self._leases.append(lease)
        return lease

    def lock_state(self, owner: str, field: str) -> Dict[str, Any]:
        for lk in self.ll.status(owner)["locks"]:
            if lk["field"] == field:
                return lk
        self.fail("no lock %s/%r in status" % (owner, field))

    def assert_released_soon(self, owner: str, timeout: float = 2.0) -> None:
        ok = wait_until(lambda: not self.ll.is_any_lock_held(owner), timeout)
        self.assertTrue(ok, "locks of %s still held after %.1f s: %s"
                        % (owner, timeout, self.ll.status(owner)["locks_status"]))

    def raw_acquire(self, owner: str, field: str, ttl_ms: int) -> Dict[str, Any]:
        """A lease taken with plain urllib and never renewed (a hung client)."""
        req = urllib.request.Request(
            "%s/api/v1/locks/%s/%s/acquire" % (self.base_url, owner, field),
            data=json.dumps({"holder": "hung-client", "operation": "hang",
                             "ttl_ms": ttl_ms}).encode(),
            method="POST", headers={"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as r:
            return json.load(r)


class LeaseTests(ServiceTestCase):

    def test_context_manager_acquires_renews_and_releases(self) -> None:
        with self.ll.lock(self.owner, "messages", "send_message", ttl_ms=600) as lease:
            self.assertIsInstance(lease.token, int)
            self.assertEqual(lease.field, "messages")
            self.assertEqual(lease.file, "%s_messages.lock" % self.owner)
            lk = self.lock_state(self.owner, "messages")
            self.assertEqual((lk["state"], lk["kind"], lk["holder"], lk["operation"]),
                             ("held", "lease", "chat-app", "send_message"))
            self.assertEqual(lk["pid"], os.getpid())
            self.assertEqual(lk["token"], lease.token)
            first_expiry = lease.expires_at
            self.assertTrue(wait_until(lambda: lease.renewals >= 2, 2.0), "no renewals")
            self.assertNotEqual(lease.expires_at, first_expiry)
            self.assertTrue(lease.check_fence())
        self.assertTrue(lease.released)
        self.assertFalse(lease.lost)
        self.assertFalse(self.ll.is_any_lock_held(self.owner))
        events = [(e["event"], e["token"]) for e in self.ll.history(self.owner, field="messages")]
        self.assertIn(("acquired", lease.token), events)
        self.assertIn(("released", lease.token), events)
        self.assertEqual(events[0], ("released", lease.token))  # newest first
        # release is idempotent
        self.assertFalse(lease.release())

    def test_renewal_keeps_a_600ms_lease_alive_for_2s(self) -> None:
        with self.ll.lock(self.owner, "messages", "long_stream", ttl_ms=600) as lease:
            time.sleep(2.0)
            self.assertFalse(lease.lost, lease.lost_reason)
            self.assertGreaterEqual(lease.renewals, 5)
            lk = self.lock_state(self.owner, "messages")
            self.assertEqual((lk["state"], lk["token"]), ("held", lease.token))
            self.assertTrue(lease.check_fence())
        events = [e["event"] for e in self.ll.history(self.owner)]
        self.assertNotIn("expired", events)
        self.assertEqual(events[0], "released")

    def test_exception_inside_with_releases(self) -> None:
        with self.assertRaises(ZeroDivisionError):
            with self.ll.lock(self.owner, "memory", "save_local") as lease:
                self.assertTrue(self.ll.is_any_lock_held(self.owner))
                1 / 0
        self.assertTrue(lease.released)
        self.assertFalse(self.ll.is_any_lock_held(self.owner))
        self.assertEqual(self.ll.history(self.owner)[0]["event"], "released")

    def test_busy_lock_raises_lock_busy_with_the_holder(self) -> None:
        other = self.client(holder="other-worker")
        with other.lock(self.owner, "messages", "send_message") as held:
            started = time.monotonic()
            with self.assertRaises(LockBusy) as cm:
                self.ll.lock(self.owner, "messages", "save_local", wait_ms=150)
            waited = time.monotonic() - started
            self.assertGreaterEqual(waited, 0.14)
            self.assertLess(waited, 3.0)
            err = cm.exception
            self.assertEqual((err.status, err.code), (409, "busy"))
            self.assertEqual(err.holder["holder"], "other-worker")
            self.assertEqual(err.holder["operation"], "send_message")
            self.assertEqual(err.holder["pid"], os.getpid())
            self.assertEqual(err.holder["token"], held.token)
            self.assertEqual(err.holder["kind"], "lease")
            self.assertIsInstance(err, LockLedgerError)

    def test_main_lock_aliases_and_bad_input(self) -> None:
        for spelling in ("", None, "main"):
            with self.ll.lock(self.owner, spelling, "load_conversation") as lease:
                self.assertEqual(lease.field, "")
                self.assertEqual(lease.file, "%s_.lock" % self.owner)
                self.assertEqual(self.lock_state(self.owner, "")["state"], "held")
                self.assertTrue(lease.check_fence())
        with self.assertRaises(LockLedgerError) as cm:
            self.ll.lock(self.owner, "no_such_field", "x", wait_ms=0)
        self.assertEqual((cm.exception.status, cm.exception.code), (400, "invalid_id"))
        with self.assertRaises(LockLedgerError) as cm:
            self.ll.lock("../etc", "messages", "x", wait_ms=0)
        self.assertEqual(cm.exception.status, 400)
        down = LockLedger("http://127.0.0.1:9", timeout=2)
        with self.assertRaises(LockLedgerError) as cm:
            down.status(self.owner)
        self.assertEqual((cm.exception.code, cm.exception.status), ("unreachable", None))

    def test_dropped_lease_is_released(self) -> None:
        with self.assertLogs("lockledger_client", "WARNING") as logs:
            self.ll.lock(self.owner, "memory", "leaky_thread", ttl_ms=3000)  # no reference
            gc.collect()
            self.assert_released_soon(self.owner, 1.5)
        self.assertIn("dropped without release", "\n".join(logs.output))

    def test_child_process_killed_with_sigkill_loses_its_lease(self) -> None:
        code = (
            "import json, sys, time\n"
            "sys.path.insert(0, %r)\n"
            "from lockledger_client import LockLedger\n"
            "ll = LockLedger(%r, holder='child')\n"
            "lease = ll.lock(%r, 'messages', 'send_message', ttl_ms=30000)\n"
            "print(json.dumps({'token': lease.token, 'lease_id': lease.lease_id}), flush=True)\n"
            "time.sleep(60)\n" % (str(CLIENT_DIR), self.base_url, self.owner))
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL)
        try:
            ready, _, _ = select.select([child.stdout], [], [], 10)
            self.assertTrue(ready, "child did not report its lease")
            grant = json.loads(child.stdout.readline())
            lk = self.lock_state(self.owner, "messages")
            self.assertEqual((lk["state"], lk["pid"], lk["token"]),
                             ("held", child.pid, grant["token"]))
            killed = time.monotonic()
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=5)
            freed = wait_until(
                lambda: self.lock_state(self.owner, "messages")["state"] == "free", 1.5)
            ended_in = time.monotonic() - killed
            self.assertTrue(freed, "lease of a killed client still there after %.2f s: %s"
                            % (ended_in, self.lock_state(self.owner, "messages")))
            self.assertLess(ended_in, 1.5)
            self.assertFalse(self.ll.is_any_lock_held(self.owner))
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=5)
            child.stdout.close()
        events = [(e["event"], e["token"]) for e in self.ll.history(self.owner)]
        closing = [ev for ev, tok in events if tok == grant["token"] and ev != "acquired"]
        self.assertEqual(len(closing), 1, events)
        self.assertIn(closing[0], ("expired", "reconciled", "cleared"))
        # and the lock can be taken again at once
        with self.ll.lock(self.owner, "messages", "after_crash", wait_ms=0) as lease:
            self.assertGreater(lease.token, grant["token"])


class StreamTests(ServiceTestCase):

    FIELDS = ["messages", "message_operations"]

    def both_held(self) -> bool:
        st = self.ll.status(self.owner)["locks_status"]
        return all(st[f] for f in self.FIELDS)

    def test_lock_order_is_fixed(self) -> None:
        self.assertEqual(LockLedger.lock_order(["messages", "main", "all", "messages"]),
                         ["", "all", "messages"])
        self.assertEqual(LockLedger.lock_order("memory"), ["memory"])
        self.assertEqual(LockLedger.lock_order(None), [""])

    def test_released_on_normal_end(self) -> None:
        seen: List[bool] = []

        def body():
            for i in range(3):
                seen.append(self.both_held())
                yield "chunk %d" % i

        chunks = list(self.ll.locked_stream(self.owner, self.FIELDS, "send_message", body()))
        self.assertEqual(chunks, ["chunk 0", "chunk 1", "chunk 2"])
        self.assertEqual(seen, [True, True, True])
        self.assert_released_soon(self.owner)

    def test_released_on_exception(self) -> None:
        def body():
            yield "first"
            raise RuntimeError("model failed")

        stream = self.ll.locked_stream(self.owner, self.FIELDS, "send_message", body())
        self.assertEqual(next(stream), "first")
        self.assertTrue(self.both_held())
        with self.assertRaises(RuntimeError):
            next(stream)
        self.assert_released_soon(self.owner)

    def test_released_on_close_mid_stream(self) -> None:
        finally_saw_lock: List[bool] = []

        def body():
            try:
                i = 0
                while True:
                    yield "chunk %d" % i
                    i += 1
            finally:  # runs on GeneratorExit, while the locks are still held
                finally_saw_lock.append(self.both_held())

        stream = self.ll.locked_stream(self.owner, self.FIELDS, "send_message", body())
        self.assertEqual([next(stream) for _ in range(3)], ["chunk 0", "chunk 1", "chunk 2"])
        stream.close()  # what werkzeug does when the client disconnects
        self.assertEqual(finally_saw_lock, [True])
        self.assert_released_soon(self.owner)

    def test_released_on_cancel_event(self) -> None:
        cancel = threading.Event()
        produced: List[int] = []

        def body():
            for i in range(1000):
                produced.append(i)
                yield i
                time.sleep(0.01)

        got: List[int] = []
        errors: List[BaseException] = []

        def consume() -> None:
            try:
                for chunk in self.ll.locked_stream(self.owner, self.FIELDS, "send_message",
                                                   body(), cancel=cancel):
                    got.append(chunk)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        self.assertTrue(wait_until(lambda: len(got) >= 3, 5.0))
        self.assertTrue(self.both_held())
        cancel.set()
        t.join(timeout=5)
        self.assertFalse(t.is_alive(), "stream did not stop after cancel")
        self.assertEqual(errors, [])
        self.assertLess(len(got), 1000)
        self.assertLessEqual(len(got), len(produced))
        self.assert_released_soon(self.owner)

    def test_factory_gets_the_leases(self) -> None:
        tokens: Dict[str, int] = {}

        def body(leases):
            tokens.update({f: lease.token for f, lease in leases.items()})
            yield "ok" if all(lease.check_fence() for lease in leases.values()) else "fenced"

        out = list(self.ll.locked_stream(self.owner, self.FIELDS, "send_message", body))
        self.assertEqual(out, ["ok"])
        self.assertEqual(sorted(tokens), sorted(self.FIELDS))
        self.assert_released_soon(self.owner)

    def test_busy_stream_raises_and_holds_nothing(self) -> None:
        other = self.client(holder="other-stream")
        closed: List[bool] = []

        def body():
            try:
                yield "never"
            finally:
                closed.append(True)

        with other.lock(self.owner, "messages", "send_message"):
            stream = self.ll.locked_stream(self.owner, self.FIELDS, "send_message", body(),
                                           wait_ms=100)
            with self.assertRaises(LockBusy):
                next(stream)
            # message_operations (locked first in sorted order) was given back
            self.assertFalse(self.ll.status(self.owner)["locks_status"]["message_operations"])
        self.assert_released_soon(self.owner)

    def test_lost_lease_stops_the_stream(self) -> None:
        def body():
            while True:
                yield "x"
                time.sleep(0.02)

        stream = self.ll.locked_stream(self.owner, ["messages"], "send_message", body(),
                                       ttl_ms=600)
        next(stream)
        self.admin().force_clear_all_locks(self.owner, "test: revoke a stream")
        with self.assertRaises(LeaseLost):
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                next(stream)
        self.assert_released_soon(self.owner)


class OperationTests(ServiceTestCase):

    def test_wait_for_lock_release(self) -> None:
        lease = self.ll.lock(self.owner, "messages", "send_message")
        self.keep(lease)
        started = time.monotonic()
        self.assertFalse(self.ll.wait_for_lock_release(self.owner, timeout=0.3, poll=0.05))
        self.assertLess(time.monotonic() - started, 2.0)
        # a free field does not wait
        self.assertTrue(self.ll.wait_for_lock_release(self.owner, ["memory"], timeout=0.3))
        timer = threading.Timer(0.3, lease.release)
        timer.start()
        try:
            started = time.monotonic()
            self.assertTrue(self.ll.wait_for_lock_release(self.owner, ["messages"], timeout=5))
            self.assertLess(time.monotonic() - started, 3.0)
        finally:
            timer.cancel()
        self.assertFalse(self.ll.is_any_lock_held(self.owner))

    def test_force_clear_needs_admin_and_fences_the_old_holder(self) -> None:
        lease = self.keep(self.ll.lock(self.owner, "messages", "send_message", ttl_ms=600))
        with self.assertRaises(LockLedgerError) as cm:
            self.ll.force_clear_all_locks(self.owner, "not an admin")
        self.assertIn(cm.exception.status, (401, 403))
        self.assertTrue(self.ll.is_any_lock_held(self.owner))
        self.assertFalse(lease.lost)

        out = self.admin().force_clear_all_locks(self.owner, "test: stream hung")
        self.assertTrue(out["success"], out)
        self.assertEqual(out["cleared"], ["%s_messages.lock" % self.owner])
        self.assertFalse(self.ll.is_any_lock_held(self.owner))
        self.assertTrue(wait_until(lambda: lease.lost, 2.0), "renewal did not notice")
        self.assertFalse(lease.check_fence())
        with self.assertRaises(LeaseLost):
            lease.raise_if_lost()
        events = self.ll.history(self.owner, event="force_cleared")
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["token"], lease.token)
        self.assertIn("admin", events[0]["actor"])
        # the next holder gets a newer token; releasing the old lease is harmless
        with self.ll.lock(self.owner, "messages", "retry", wait_ms=0) as fresh:
            self.assertGreater(fresh.token, lease.token)
            self.assertFalse(lease.release())
            self.assertTrue(fresh.check_fence())
        # nothing left to clear
        self.assertEqual(self.admin().force_clear_all_locks(self.owner, "again")["cleared"], [])

    def test_cleanup_on_cancellation_releases_this_clients_leases(self) -> None:
        mine = [self.keep(self.ll.lock(self.owner, f, "send_message"))
                for f in ("messages", "message_operations")]
        elsewhere = self.keep(self.ll.lock(self.owner + "-other", "messages", "x"))
        other_client = self.client(holder="other-client")
        theirs = self.keep(other_client.lock(self.owner, "memory", "save_memory"))

        out = self.ll.cleanup_on_cancellation(self.owner)
        self.assertEqual(sorted(out["released"]),
                         sorted("%s_%s.lock" % (self.owner, f)
                                for f in ("messages", "message_operations")))
        for lease in mine:
            self.assertTrue(lease.released)
            self.assertTrue(lease.lost)
        # another owner's lease, and another client's lease, are untouched
        self.assertTrue(elsewhere.active)
        self.assertTrue(theirs.active)
        self.assertEqual([s["field"] for s in out["skipped"]], ["memory"])
        st = self.ll.status(self.owner)["locks_status"]
        self.assertEqual((st["messages"], st["message_operations"], st["memory"]),
                         (False, False, True))
        theirs.release()
        self.assertFalse(self.ll.is_any_lock_held(self.owner))
        # idempotent
        self.assertEqual(self.ll.cleanup_on_cancellation(self.owner)["released"], [])


class NoAutoExpireTests(ServiceTestCase):
    """Expired leases and dead holders stay stale until cleared (auto_expire = false,
    no periodic reconciliation)."""

    service_env = {"LOCKLEDGER_AUTO_EXPIRE": "0", "LOCKLEDGER_RECONCILE_PERIOD_MS": "0"}

    def test_crashed_library_holder_is_stale_but_not_held(self) -> None:
        env = dict(os.environ, RUST_LOG="warn")
        env.update(self.service_env)
        hold = subprocess.Popen(
            [str(binary()), "--storage", self.storage, "hold", self.owner, "memory",
             "--operation", "save_memory"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            env=env)
        try:
            ready, _, _ = select.select([hold.stdout], [], [], 10)
            self.assertTrue(ready, "lockledger hold did not report")
            held = json.loads(hold.stdout.readline())
            self.assertEqual(held["event"], "held")
            lk = self.lock_state(self.owner, "memory")
            self.assertEqual((lk["state"], lk["kind"]), ("held", "library"))
            self.assertTrue(self.ll.is_any_lock_held(self.owner))
            hold.send_signal(signal.SIGKILL)
            hold.wait(timeout=5)
        finally:
            if hold.poll() is None:
                hold.kill()
                hold.wait(timeout=5)
            hold.stdout.close()
        file = "%s_memory.lock" % self.owner
        self.assertTrue(wait_until(lambda: self.ll.get_stale_locks(self.owner) == [file], 3.0))
        self.assertEqual(self.lock_state(self.owner, "memory")["stale_reason"], "holder_dead")
        # the kernel dropped the flock with the process: nothing holds it
        self.assertFalse(self.ll.is_any_lock_held(self.owner))
        self.assertTrue(self.ll.wait_for_lock_release(self.owner, timeout=1))
        out = self.ll.cleanup_on_cancellation(self.owner)
        self.assertEqual((out["released"], out["cleared"]), ([], [file]))
        self.assertEqual(self.ll.get_stale_locks(self.owner), [])

    def test_get_stale_locks_lists_an_expired_lease(self) -> None:
        self.assertEqual(self.ll.get_stale_locks(self.owner), [])
        grant = self.raw_acquire(self.owner, "messages", ttl_ms=300)
        file = "%s_messages.lock" % self.owner
        self.assertTrue(wait_until(lambda: self.ll.get_stale_locks(self.owner) == [file], 3.0))
        lk = self.lock_state(self.owner, "messages")
        self.assertEqual((lk["state"], lk["stale_reason"], lk["token"]),
                         ("stale", "lease_expired", grant["token"]))
        self.assertTrue(lk["clearable"])
        # still taken: the service keeps the flock until someone clears it
        self.assertTrue(self.ll.is_any_lock_held(self.owner))
        self.assertFalse(self.ll.wait_for_lock_release(self.owner, timeout=0.2))
        with self.assertRaises(LockBusy):
            self.ll.lock(self.owner, "messages", "x", wait_ms=50)
        # a stale token is refused, the right one clears
        out = self.ll.ensure_locks_cleared(self.owner, {"messages": grant["token"] + 1})
        self.assertEqual(out["cleared"], [])
        out = self.ll.ensure_locks_cleared(self.owner, {"messages": grant["token"]})
        self.assertEqual(out["cleared"], [file])
        self.assertEqual(self.ll.get_stale_locks(self.owner), [])
        self.assertFalse(self.ll.is_any_lock_held(self.owner))

    def test_renewed_lease_does_not_go_stale(self) -> None:
        with self.ll.lock(self.owner, "memory", "save_memory", ttl_ms=400) as lease:
            time.sleep(1.0)
            self.assertEqual(self.ll.get_stale_locks(self.owner), [])
            self.assertFalse(lease.lost)


if __name__ == "__main__":
    unittest.main()
