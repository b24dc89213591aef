"""Helpers of the Python tests: a real lockledger service on a temporary storage
directory, child processes holding locks, bounded waits."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from lockledger_client import LockLedger

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
HOLDER_SCRIPT = HERE / "lock_holder.py"


def binary() -> Path:
    env = os.environ.get("LOCKLEDGER_BIN")
    path = Path(env) if env else ROOT / "target" / "debug" / "lockledger"
    return path.resolve()  # a relative LOCKLEDGER_BIN is taken from the current directory


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.02) -> bool:
    """Polls ``pred`` until it is true or ``timeout`` seconds pass; returns whether it
    became true."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class Service:
    """One lockledger service on a temporary storage directory and a free port."""

    def __init__(self, env: Optional[Dict[str, str]] = None,
                 storage: Optional[str] = None) -> None:
        exe = binary()
        if not exe.is_file():
            raise RuntimeError("lockledger binary not found at %s: build it (cargo build) or "
                               "set LOCKLEDGER_BIN" % exe)
        self.exe = exe
        self.own_storage = storage is None
        self.storage = storage or tempfile.mkdtemp(prefix="lockledger-pytest-")
        self.locks_dir = os.path.join(self.storage, "locks")
        self.env = dict(os.environ)
        self.env.setdefault("RUST_LOG", "warn")
        self.env.update(env or {})
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.base_url = ""
        self.admin_token = ""
        self.start()

    def start(self) -> None:
        out_path = os.path.join(self.storage, "service.out")
        self._out = open(out_path, "wb")
        self._err = open(os.path.join(self.storage, "service.err"), "ab")
        self.proc = subprocess.Popen(
            [str(self.exe), "--storage", self.storage, "serve", "--bind", "127.0.0.1:0"],
            stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL, env=self.env)
        url = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and url is None:
            if self.proc.poll() is not None:
                break
            with open(out_path, "rb") as f:
                for line in f.read().decode(errors="replace").splitlines():
                    if "listening on " in line:
                        url = line.split("listening on ", 1)[1].strip()
            if url is None:
                time.sleep(0.02)
        if url is None:
            self.stop()
            raise RuntimeError("lockledger did not start: %s" % self.log())
        self.base_url = url
        with open(os.path.join(self.storage, "admin-token")) as f:
            self.admin_token = f.read().strip()
        os.makedirs(self.locks_dir, exist_ok=True)

    def log(self) -> str:
        try:
            with open(os.path.join(self.storage, "service.err"), "rb") as f:
                return f.read()[-3000:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._out.close()
        self._err.close()

    def close(self) -> None:
        self.stop()
        if self.own_storage:
            shutil.rmtree(self.storage, ignore_errors=True)

    def client(self, **kw: Any) -> LockLedger:
        kw.setdefault("timeout", 10)
        return LockLedger(self.base_url, **kw)

    def admin(self) -> LockLedger:
        return self.client(admin_token=self.admin_token, holder="test-admin")

    def lock_path(self, owner: str, field: str) -> str:
        return os.path.join(self.locks_dir, "%s_%s.lock" % (owner, field))


def lock_state(client: LockLedger, owner: str, field: str) -> Dict[str, Any]:
    for lk in client.status(owner)["locks"]:
        if lk["field"] == field:
            return dict(lk)
    raise AssertionError("no lock %s/%r in status" % (owner, field))


def read_json_line(proc: "subprocess.Popen[bytes]", timeout: float = 10) -> Dict[str, Any]:
    """The next JSON line a child printed, within ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "child %d printed nothing within %.1f s" % (proc.pid, timeout)
    line = proc.stdout.readline()
    assert line, "child %d exited (status %s) before reporting" % (proc.pid, proc.poll())
    out: Dict[str, Any] = json.loads(line)
    return out


class Holder:
    """A child process holding a lock with plain ``filelock`` (``plain``) or the
    drop-in (``dropin``); see ``lock_holder.py``."""

    def __init__(self, kind: str, path: str, *, url: Optional[str] = None,
                 operation: Optional[str] = None, try_timeout: Optional[float] = None,
                 env: Optional[Dict[str, str]] = None) -> None:
        args = [sys.executable, str(HOLDER_SCRIPT), kind, path]
        if operation:
            args += ["--operation", operation]
        if try_timeout is not None:
            args += ["--timeout", str(try_timeout)]
        child_env = dict(os.environ)
        if url:
            child_env["LOCKLEDGER_URL"] = url
        child_env.update(env or {})
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=child_env)
        self.pid = self.proc.pid

    def report(self, timeout: float = 10) -> Dict[str, Any]:
        try:
            return read_json_line(self.proc, timeout)
        except AssertionError:
            err = self.proc.stderr.read().decode(errors="replace") if (
                self.proc.poll() is not None and self.proc.stderr) else ""
            raise AssertionError("holder %d did not report: %s" % (self.pid, err)) from None

    def release(self, timeout: float = 10) -> Dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"release\n")
        self.proc.stdin.flush()
        return self.report(timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=5)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
