"""Python client of the lockledger lock-registry service, for the chat app.

Three ways in, from least to most change to the app:

1. **The drop-in** :class:`FileLock` — change ``from filelock import FileLock`` to
   ``from lockledger_client import FileLock``. The app's processes keep taking the
   same kernel ``flock`` through ``filelock``; each holder is registered with
   lockledger (pid, operation = calling function, fencing token), so the Lock Status
   modal shows who holds what, a dead holder is reconciled, and a force clear is seen
   (:attr:`FileLock.lost`, :meth:`FileLock.check_fence`). Without the service the lock
   works as before. Needs the ``[filelock]`` extra.

2. **The Flask blueprint** — :func:`lockledger_client.flask.lock_routes` serves the
   app's ``/get_lock_status``, ``/ensure_locks_cleared`` and ``/force_clear_locks``
   from lockledger, behind the app's own login decorator and rate limits. Needs the
   ``[flask]`` extra.

3. **Leases** — :meth:`LockLedger.lock` takes a lock *through* the service (it holds
   the flock, the client renews in the background), and :meth:`LockLedger.locked_stream`
   guards a Flask streaming generator, releasing on end, error, disconnect and cancel::

       ll = LockLedger("http://127.0.0.1:8787", holder="chat-app")

       with ll.lock(conv_id, "messages", "send_message") as lease:
           ...                                   # write, passing lease.token along
           if lease.check_fence():               # still the newest grant?
               os.replace(tmp, path)

       return Response(ll.locked_stream(conv_id, ["messages", "message_operations"],
                                        "send_message", generate(), cancel=event))

   and the five operations of the chat app's plan: :meth:`LockLedger.wait_for_lock_release`,
   :meth:`LockLedger.force_clear_all_locks`, :meth:`LockLedger.cleanup_on_cancellation`,
   :meth:`LockLedger.is_any_lock_held`, :meth:`LockLedger.get_stale_locks`.

The main lock (field ``""``) may be written ``""``, ``None`` or ``"main"``.
Requires Python >= 3.9; the core uses the standard library only. Thread-safe.
"""

from __future__ import annotations

from .client import DEFAULT_URL, MAX_WAIT_MS, LockLedger
from .config import configure, settings
from .errors import LeaseLost, LockBusy, LockLedgerError
from .file_lock import FileLock, caller_operation
from .leases import Lease
from .names import (
    CONVERSATION_FIELDS,
    DEFAULT_NAMESPACES,
    DOCUMENT_FIELDS,
    MAIN,
    LockName,
    Namespace,
    parse_lock_name,
)

__version__ = "0.2.0"

__all__ = [
    "LockLedger",
    "Lease",
    "LockLedgerError",
    "LockBusy",
    "LeaseLost",
    "FileLock",
    "configure",
    "settings",
    "caller_operation",
    "parse_lock_name",
    "LockName",
    "Namespace",
    "MAIN",
    "MAX_WAIT_MS",
    "DEFAULT_URL",
    "CONVERSATION_FIELDS",
    "DOCUMENT_FIELDS",
    "DEFAULT_NAMESPACES",
    "__version__",
]
