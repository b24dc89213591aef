"""A child process that holds one lock file, for the tests.

    python lock_holder.py plain|dropin PATH [--operation OP] [--timeout S]

``plain`` takes it with ``filelock.FileLock`` (the chat app's code today), ``dropin``
with ``lockledger_client.FileLock`` (service from ``LOCKLEDGER_URL``). It prints one
JSON line when it holds the lock (``{"event": "held", "pid", "token"}``) or gave up
(``{"event": "timeout"}`` after ``--timeout`` seconds), then waits for a line on stdin
(or EOF), releases and prints ``{"event": "released"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def say(**kw: Any) -> None:
    print(json.dumps(kw), flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["plain", "dropin"])
    p.add_argument("path")
    p.add_argument("--operation")
    p.add_argument("--timeout", type=float, default=-1)
    a = p.parse_args()
    if a.kind == "plain":
        import filelock
        lock: Any = filelock.FileLock(a.path)
    else:
        import lockledger_client
        lock = lockledger_client.FileLock(a.path, operation=a.operation)
    import filelock
    try:
        lock.acquire(timeout=a.timeout)
    except filelock.Timeout:
        say(event="timeout", pid=os.getpid())
        return 0
    say(event="held", pid=os.getpid(), token=getattr(lock, "token", None))
    sys.stdin.readline()
    lock.release()
    say(event="released", pid=os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
