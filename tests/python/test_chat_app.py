"""End to end: a miniature of the chat app (``mini_chat_app.py``, a real Flask app using
the drop-in FileLock and the blueprint) driven by Flask's test client as the browser
drives the real one — ``GET /get_lock_status/<id>`` and ``POST
/ensure_locks_cleared/<id>`` with ``Content-Type: application/json`` and no body — while
real processes hold, stream and die. Every wait is bounded by a deadline."""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

import flask
import pytest
from flask.testing import FlaskClient

from lockledger_client import FileLock
from lockledger_client.flask import lock_routes

import mini_chat_app
from support import HERE, Holder, Service, read_json_line, wait_until

KEYS = set(mini_chat_app.LOCK_KEYS)
JSON = {"Content-Type": "application/json"}
MARKUP = re.compile(r"[<>&\"']")


@pytest.fixture(scope="module")
def ll_service() -> Iterator[Service]:
    # Dead holders stay stale until someone clears them, so the test can see them.
    s = Service({"LOCKLEDGER_RECONCILE_PERIOD_MS": "0"})
    yield s
    s.close()


@pytest.fixture
def app(ll_service: Service, restore_settings: Any) -> flask.Flask:
    return mini_chat_app.create_app(ll_service.storage, ll_service.client(),
                                    admin_client=ll_service.admin())


@pytest.fixture
def browser(app: flask.Flask) -> FlaskClient:
    c = app.test_client()
    assert c.post("/login", json={"email": "ana@example.com"}).status_code == 200
    return c


@pytest.fixture
def conv(owner: str) -> str:
    return owner.replace("t-", "conv-", 1)


def status(browser: FlaskClient, conv: str) -> Tuple[int, Dict[str, Any]]:
    # exactly what the front end sends
    r = browser.get("/get_lock_status/%s" % conv, headers=JSON)
    assert r.is_json, r.data[:200]
    return r.status_code, r.get_json()


def clear(browser: FlaskClient, conv: str) -> Tuple[int, Dict[str, Any]]:
    r = browser.post("/ensure_locks_cleared/%s" % conv, headers=JSON)  # no body
    assert r.is_json, r.data[:200]
    body = r.get_json()
    assert not MARKUP.search(body["message"]), body["message"]
    return r.status_code, body


def assert_all_clear(browser: FlaskClient, conv: str) -> None:
    code, st = status(browser, conv)
    assert code == 200
    assert st["any_locked"] is False, st
    assert st["stale_locks"] == []
    assert not any(st["locks_status"].values()), st["locks_status"]


def by_field(st: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {lk["field"]: lk for lk in st["locks"]}


# --------------------------------------------------------------------------- the cases


def test_all_clear(browser: FlaskClient, conv: str, ll_service: Service) -> None:
    r = browser.post("/set_field/%s/memory" % conv, json={"value": "likes tea"})
    assert r.status_code == 200 and r.get_json()["value"] == "likes tea"
    assert os.path.exists(os.path.join(ll_service.locks_dir, "%s_memory.lock" % conv))
    code, st = status(browser, conv)
    assert code == 200
    assert st["conversation_id"] == conv
    assert KEYS <= set(st["locks_status"])  # every key the front end has a label for
    assert st["any_locked"] is False and st["stale_locks"] == []
    assert not any(st["locks_status"].values())
    code, out = clear(browser, conv)
    assert code == 200
    assert (out["success"], out["cleared"]) == (True, [])
    assert "all clear" in out["message"]


def test_routes_keep_the_apps_login_and_rate_limit(app: flask.Flask, conv: str) -> None:
    anonymous = app.test_client()
    assert anonymous.get("/get_lock_status/%s" % conv, headers=JSON).status_code == 302
    assert anonymous.post("/ensure_locks_cleared/%s" % conv, headers=JSON).status_code == 302
    assert anonymous.post("/force_clear_locks/%s" % conv, headers=JSON).status_code == 302
    browser = app.test_client()
    browser.post("/login", json={})
    before = dict(app.extensions["limiter"].calls)
    status(browser, conv)
    calls = app.extensions["limiter"].calls
    assert calls.get("get_lock_status", 0) == before.get("get_lock_status", 0) + 1
    # a POST a cross-site form could send (no JSON type, no custom header) is refused
    r = browser.post("/ensure_locks_cleared/%s" % conv, data="x",
                     content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415 and r.get_json()["success"] is False
    # a bad id: lockledger's 400, as JSON with success false and a message
    r = browser.get("/get_lock_status/.hidden%3Cb%3E", headers=JSON)
    assert r.is_json and r.status_code == 400
    body = r.get_json()
    assert body["success"] is False and body["message"] and not MARKUP.search(body["message"])


def test_held_by_a_streaming_reply(browser: FlaskClient, conv: str) -> None:
    resp = browser.post("/send_message/%s" % conv, headers=JSON,
                        data=json.dumps({"text": "hi", "chunks": 1000, "delay": 0.001}),
                        buffered=False)
    chunks = iter(resp.response)
    assert b"chunk 0" in next(chunks)  # the reply is streaming, its locks are held
    try:
        code, st = status(browser, conv)
        assert code == 200 and st["any_locked"] is True
        assert st["locks_status"]["messages"] and st["locks_status"]["message_operations"]
        assert not st["locks_status"]["memory"]
        locks = by_field(st)
        for field in ("messages", "message_operations"):
            lk = locks[field]
            assert (lk["state"], lk["kind"], lk["holder"], lk["operation"], lk["pid"]) == (
                "held", "library", "chat-app", "stream_reply", os.getpid())
            assert isinstance(lk["token"], int)
        assert st["stale_locks"] == []
        code, out = clear(browser, conv)
        assert code == 200 and out["success"] is False and out["cleared"] == []
        msg = out["message"]
        assert "messages" in msg and "stream_reply" in msg and "pid %d" % os.getpid() in msg
        assert {s["field"] for s in out["skipped"]} == {"messages", "message_operations"}
    finally:
        resp.close()  # the browser went away: werkzeug closes the stream
    assert_all_clear(browser, conv)


@pytest.fixture
def worker(ll_service: Service) -> Iterator[Callable[[], "Worker"]]:
    started: List[Worker] = []

    def start() -> Worker:
        w = Worker(ll_service)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


class Worker:
    """One more app process (as a second gunicorn worker), serving over HTTP."""

    def __init__(self, service: Service) -> None:
        env = dict(os.environ, LOCKLEDGER_URL=service.base_url)
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "mini_chat_app.py"), service.storage],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
        self.pid = self.proc.pid
        self.port = read_json_line(self.proc)["port"]
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("POST", "/login", body=b"{}", headers=JSON)
        r = conn.getresponse()
        r.read()
        self.cookie = (r.getheader("Set-Cookie") or "").split(";")[0]
        conn.close()

    def stream(self, conv: str, chunks: int, delay: float) -> Tuple[Any, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        body = json.dumps({"text": "hi", "chunks": chunks, "delay": delay})
        conn.request("POST", "/send_message/%s" % conv, body=body,
                     headers=dict(JSON, Cookie=self.cookie))
        r = conn.getresponse()
        assert r.status == 200
        return conn, r

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


def test_streaming_worker_killed_is_stale_then_cleared(browser: FlaskClient, conv: str,
                                                       worker: Callable[[], Worker]) -> None:
    w = worker()
    conn, r = w.stream(conv, chunks=100000, delay=0.01)
    assert r.readline().startswith(b"chunk 0")
    code, st = status(browser, conv)
    locks = by_field(st)
    assert (locks["messages"]["state"], locks["messages"]["pid"],
            locks["messages"]["operation"]) == ("held", w.pid, "stream_reply")
    w.proc.send_signal(signal.SIGKILL)
    w.proc.wait(timeout=5)
    conn.close()
    files = sorted("%s_%s.lock" % (conv, f) for f in ("message_operations", "messages"))
    assert wait_until(lambda: sorted(status(browser, conv)[1]["stale_locks"]) == files, 5.0)
    code, st = status(browser, conv)
    assert st["any_locked"] is True
    assert st["locks_status"]["messages"] and st["locks_status"]["message_operations"]
    assert by_field(st)["messages"]["stale_reason"] == "holder_dead"
    code, out = clear(browser, conv)
    assert code == 200 and out["success"] is True, out
    assert sorted(out["cleared"]) == files
    assert_all_clear(browser, conv)


def test_artefacts_and_unconfigured_key_holders_are_reported(
        browser: FlaskClient, conv: str, ll_service: Service,
        holders: Callable[..., Holder]) -> None:
    art = holders("dropin", os.path.join(ll_service.locks_dir, "%s_artefacts.lock" % conv),
                  url=ll_service.base_url, operation="save_artefact")
    summaries = holders("plain", os.path.join(ll_service.locks_dir,
                                              "%s_summaries.lock" % conv))
    art.report()
    summaries.report()
    code, st = status(browser, conv)
    assert code == 200 and st["any_locked"] is True
    assert st["locks_status"]["artefacts"] is True
    assert st["locks_status"]["summaries"] is True  # a key the service does not know
    locks = by_field(st)
    assert (locks["artefacts"]["kind"], locks["artefacts"]["pid"],
            locks["artefacts"]["operation"]) == ("library", art.pid, "save_artefact")
    assert (locks["summaries"]["kind"], locks["summaries"]["pid"],
            locks["summaries"]["configured"]) == ("external", summaries.pid, False)
    code, out = clear(browser, conv)
    assert out["success"] is False
    assert "summaries" in out["message"] and "artefacts" in out["message"]
    assert "pid %d" % summaries.pid in out["message"]
    art.release()
    summaries.release()
    assert_all_clear(browser, conv)


def test_force_clear_route_is_for_admins(app: flask.Flask, browser: FlaskClient, conv: str,
                                         ll_service: Service) -> None:
    lock = FileLock(os.path.join(ll_service.locks_dir, "%s_memory.lock" % conv))
    with lock:
        token = lock.token
        assert token is not None
        body = json.dumps({"tokens": {"memory": token}, "reason": "stuck save"})
        r = browser.post("/force_clear_locks/%s" % conv, headers=JSON, data=body)
        assert r.status_code == 403 and r.get_json()["success"] is False  # not an admin
        assert not lock.lost
        admin = app.test_client()
        admin.post("/login", json={"email": "boss@example.com", "admin": True})
        r = admin.post("/force_clear_locks/%s" % conv, headers=JSON, data=json.dumps({}))
        assert r.status_code == 400 and "tokens" in r.get_json()["message"]
        r = admin.post("/force_clear_locks/%s" % conv, headers=JSON, data=body)
        out = r.get_json()
        assert r.status_code == 200 and out["success"] is True, out
        assert out["cleared"] == ["%s_memory.lock" % conv]
        assert lock.lost is True  # the holder sees it
    events = ll_service.client().history(conv, event="force_cleared")
    assert events and "boss@example.com" in events[0]["actor"]
    assert_all_clear(browser, conv)


def test_without_admin_client_force_clear_is_refused(ll_service: Service, conv: str,
                                                     restore_settings: Any) -> None:
    app = flask.Flask("no-admin")
    app.register_blueprint(lock_routes(ll_service.client()))
    r = app.test_client().post("/force_clear_locks/%s" % conv, headers=JSON,
                               data=json.dumps({"tokens": {"memory": 1}}))
    assert r.status_code == 403 and r.is_json and r.get_json()["success"] is False


def test_lockledger_stopped(owner: str, restore_settings: Any,
                            caplog: pytest.LogCaptureFixture) -> None:
    service = Service()
    try:
        app = mini_chat_app.create_app(service.storage, service.client())
        browser = app.test_client()
        browser.post("/login", json={})
        conv = owner.replace("t-", "conv-", 1)
        assert browser.post("/set_field/%s/messages" % conv,
                            json={"value": [1]}).status_code == 200
        service.stop()
        with caplog.at_level(logging.WARNING, logger="lockledger_client"):
            # the app still locks and serves
            for i in range(2, 5):
                r = browser.post("/set_field/%s/messages" % conv, json={"value": i})
                assert r.status_code == 200 and r.get_json()["value"] == list(range(1, i + 1))
            r = browser.post("/send_message/%s" % conv, headers=JSON,
                             data=json.dumps({"chunks": 3}))
            assert r.status_code == 200 and r.data.count(b"chunk") == 3
        warned = [m for m in caplog.messages if "cannot register" in m]
        assert len(warned) == 1, caplog.messages
        # status and clear say the lock service is unavailable, as JSON
        r = browser.get("/get_lock_status/%s" % conv, headers=JSON)
        assert r.status_code == 503 and r.is_json
        st = r.get_json()
        assert st["success"] is False and "unavailable" in st["message"]
        assert st["any_locked"] is True  # never "All locks are clear" when unknown
        assert not MARKUP.search(st["message"])
        r = browser.post("/ensure_locks_cleared/%s" % conv, headers=JSON)
        assert r.status_code == 503 and r.is_json
        out = r.get_json()
        assert out["success"] is False and "unavailable" in out["message"]
        assert not MARKUP.search(out["message"])
    finally:
        service.close()


def test_old_code_deleting_a_held_lock_file_is_reported(
        browser: FlaskClient, conv: str, ll_service: Service,
        holders: Callable[..., Holder], caplog: pytest.LogCaptureFixture) -> None:
    path = os.path.join(ll_service.locks_dir, "%s_messages.lock" % conv)
    first = holders("dropin", path, url=ll_service.base_url, operation="stream_reply")
    first.report()
    os.unlink(path)  # what the app's old lock routes do
    with caplog.at_level(logging.WARNING, logger="lockledger_client"):
        with FileLock(path) as second:  # the kernel lock is per file: it gets the new one
            assert second.is_locked and not second.registered
            code, st = status(browser, conv)
            lk = by_field(st)["messages"]
            assert (lk["state"], lk["pid"], lk["operation"]) == ("held", first.pid,
                                                                 "stream_reply")
            assert lk["file_replaced"] is True
            assert lk["conflict"]["pid"] == os.getpid()
            assert st["any_locked"] is True
            code, out = clear(browser, conv)
            assert out["success"] is False and "stream_reply" in out["message"]
    assert any("refused to register" in m for m in caplog.messages)
    first.release()
    assert_all_clear(browser, conv)
    with FileLock(path) as again:  # once the old holder ended, it is granted again
        assert again.registered
        assert by_field(status(browser, conv)[1])["messages"]["kind"] == "library"
