"""Python client of the lockledger lock-registry service (standard library only).

The chat app (Flask) takes its conversation locks through lockledger as *leases*: the
service holds the kernel ``flock`` and a holder record for it, the client renews the
lease in the background and releases it on every path. Locks then show up in the Lock
Status modal with their operation, can be cleared safely, and a holder that was
force-cleared is fenced out by its token.

Typical use::

    ll = LockLedger("http://127.0.0.1:8787", holder="chat-app")

    with ll.lock(conv_id, "messages", "send_message") as lease:
        ...                                   # write, passing lease.token along
        if lease.check_fence():               # still the newest grant?
            os.replace(tmp, path)

    # Flask streaming endpoint: released on end, error, disconnect and cancel
    return Response(ll.locked_stream(conv_id, ["messages", "message_operations"],
                                     "send_message", generate(), cancel=event))

The main lock (field ``""``) may be written ``""``, ``None`` or ``"main"``.

Requires Python >= 3.9. Thread-safe: one :class:`LockLedger` may be shared by every
request thread of the app.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

__all__ = [
    "LockLedger",
    "Lease",
    "LockLedgerError",
    "LockBusy",
    "LeaseLost",
    "MAIN",
]

log = logging.getLogger("lockledger_client")

#: The main lock's field as stored (written ``main`` in URL paths).
MAIN = ""
_MAIN_ALIAS = "main"
#: The service refuses a longer ``wait_ms``.
MAX_WAIT_MS = 60_000

Json = Dict[str, Any]
FieldSpec = Union[str, None, Sequence[Optional[str]]]


# --------------------------------------------------------------------------- errors


class LockLedgerError(Exception):
    """An error answered by the service (or the service could not be reached).

    Attributes:
        code: the service's error code (``busy``, ``lease_gone``, ``not_admin``,
            ``invalid_id``, ...) or ``unreachable`` / ``bad_response`` for transport
            problems.
        message: the human-readable message.
        status: the HTTP status, or ``None`` when no HTTP answer was received.
        body: the decoded JSON body of the error answer, if any.
    """

    def __init__(self, code: str, message: str, status: Optional[int] = None,
                 body: Optional[Json] = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.code = code
        self.message = message
        self.status = status
        self.body = body or {}


class LockBusy(LockLedgerError):
    """The lock stayed held by someone else for the whole wait (HTTP 409 ``busy``).

    ``holder`` is the service's description of the current holder: ``holder``,
    ``operation``, ``pid``, ``host``, ``kind``, ``acquired_at``, ``age_s``, ``token``,
    ``note``, ...
    """

    def __init__(self, code: str, message: str, status: Optional[int] = None,
                 body: Optional[Json] = None) -> None:
        super().__init__(code, message, status, body)
        holder = (body or {}).get("holder")
        self.holder: Json = holder if isinstance(holder, dict) else {}


class LeaseLost(LockLedgerError):
    """The lease ended without this client releasing it: it expired, was force-cleared
    by an admin, or was released by :meth:`LockLedger.cleanup_on_cancellation`.
    Stop writing: the data store refuses the old token from now on."""


def _error_from(status: int, body: Json, raw: bytes) -> LockLedgerError:
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code = str(err.get("code", "error"))
        message = str(err.get("message", ""))
    else:
        code = "http_%d" % status
        message = raw[:200].decode("utf-8", "replace")
    if code == "busy":
        return LockBusy(code, message, status, body)
    if status == 410 or code == "lease_gone":
        return LeaseLost(code, message, status, body)
    return LockLedgerError(code, message, status, body)


# --------------------------------------------------------------------------- leases


def _norm_field(field: Optional[str]) -> str:
    """``None`` and ``"main"`` mean the main lock ``""``."""
    if field is None or field == _MAIN_ALIAS:
        return MAIN
    return field


def _path_field(field: str) -> str:
    return _MAIN_ALIAS if field == MAIN else field


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


class _LeaseCore:
    """The state of one lease, shared by its :class:`Lease` facade, its renewal thread
    and the client's table of live leases. It never refers back to the facade, so a
    facade nobody references any more is collected and its lease released."""

    def __init__(self, client: "LockLedger", owner: str, field: str, operation: str,
                 ttl_ms: int, grant: Json) -> None:
        self.client = client
        self.owner = owner
        self.field = field
        self.operation = operation
        self.ttl_ms = ttl_ms
        self.lease_id: str = grant["lease_id"]
        self.token: int = int(grant["token"])
        self.expires_at: Optional[str] = grant.get("expires_at")
        self.file: Optional[str] = grant.get("file")
        self.acquired_monotonic = time.monotonic()
        self.renewals = 0
        self.last_error: Optional[BaseException] = None
        self.release_error: Optional[BaseException] = None
        self.lost = False
        self.lost_reason: Optional[str] = None
        self.released = False
        self.abandoned = False
        self._mu = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- state transitions (each under the mutex, each at most once) ----------------

    def mark_lost(self, reason: str) -> None:
        with self._mu:
            if self.released or self.lost:
                return
            self.lost = True
            self.lost_reason = reason
        self._stop.set()
        self.client._forget(self)
        log.warning("lockledger: lease %s/%s (%s, token %s) lost: %s",
                    self.owner, self.field or "(main)", self.operation, self.token, reason)

    def release(self, *, lost_reason: Optional[str] = None) -> bool:
        """Stops renewing and releases the lease. Idempotent. Returns True if the service
        released it now, False if it had already ended. With ``lost_reason`` (a release
        on someone else's behalf) the holder sees ``lost``."""
        with self._mu:
            if self.released:
                return False
            self.released = True
            if lost_reason is not None and not self.lost:
                self.lost = True
                self.lost_reason = lost_reason
        self._stop.set()
        self.client._forget(self)
        try:
            self.client._request("DELETE", "/api/v1/leases/%s" % _q(self.lease_id),
                                 timeout=min(self.client.timeout, 10.0))
            return True
        except LeaseLost:
            return False  # already ended (expired, cleared): nothing to release
        except LockLedgerError as e:
            if e.code == "unknown_lease":
                return False
            # Renewal has stopped, so the lease ends by itself within its ttl.
            self.release_error = e
            log.warning("lockledger: could not release lease %s/%s (token %s): %s; "
                        "it expires within %d ms", self.owner, self.field or "(main)",
                        self.token, e, self.ttl_ms)
            return False

    def abandon(self) -> None:
        """Called when the facade is garbage-collected while still holding."""
        self.abandoned = True
        self._stop.set()

    # -- renewal --------------------------------------------------------------------

    def start_renewal(self) -> None:
        interval = max(self.ttl_ms / 3000.0, 0.01)
        t = threading.Thread(target=self._renew_loop, args=(interval,),
                             name="lockledger-renew-%s" % self.lease_id[:8], daemon=True)
        self._thread = t
        t.start()

    def renew_once(self) -> Json:
        timeout = min(self.client.timeout, max(1.0, self.ttl_ms / 1000.0))
        resp = self.client._request("POST", "/api/v1/leases/%s/renew" % _q(self.lease_id),
                                    timeout=timeout)
        with self._mu:
            self.expires_at = resp.get("expires_at", self.expires_at)
            self.renewals += 1
            self.last_error = None
        return resp

    def _renew_loop(self, interval: float) -> None:
        wait = interval
        while not self._stop.wait(wait):
            wait = interval
            try:
                self.renew_once()
            except LeaseLost as e:
                self.mark_lost(e.message or "the lease has ended")
                return
            except LockLedgerError as e:
                if e.code == "unknown_lease":
                    self.mark_lost(e.message or "the service does not know this lease")
                    return
                # Transient (service restarting, 503, timeout): retry sooner.
                self.last_error = e
                wait = max(interval / 3.0, 0.01)
            except Exception as e:  # never let the renewal thread die silently
                self.last_error = e
                wait = max(interval / 3.0, 0.01)
        if self.abandoned and not self.released:
            log.warning("lockledger: lease %s/%s (%s) was dropped without release(); "
                        "releasing it", self.owner, self.field or "(main)", self.operation)
            self.release()


class Lease:
    """A granted lock (a lease held by the service for this process).

    Returned by :meth:`LockLedger.lock`, already acquired and renewing in a daemon
    thread every ``ttl/3``. Use it as a context manager (released on exit, also on
    exceptions) or call :meth:`release`. Dropping every reference to a live lease
    releases it too (a safety net, not a substitute for ``with``).

    Attributes: ``owner``, ``field`` (``""`` for the main lock), ``operation``,
    ``lease_id``, ``token`` (the fencing token: pass it with your writes),
    ``expires_at`` (RFC 3339, updated by renewals), ``file``, ``ttl_ms``.
    """

    def __init__(self, core: _LeaseCore) -> None:
        self._core = core
        self._finalizer = weakref.finalize(self, core.abandon)
        self._finalizer.atexit = False

    # -- read-only view ---------------------------------------------------------------

    owner = property(lambda self: self._core.owner)
    field = property(lambda self: self._core.field)
    operation = property(lambda self: self._core.operation)
    lease_id = property(lambda self: self._core.lease_id)
    token = property(lambda self: self._core.token)
    expires_at = property(lambda self: self._core.expires_at)
    file = property(lambda self: self._core.file)
    ttl_ms = property(lambda self: self._core.ttl_ms)
    renewals = property(lambda self: self._core.renewals)

    @property
    def lost(self) -> bool:
        """True once the lease ended without our release: a renewal got 410, a fence
        check said the token is no longer current, or cleanup_on_cancellation
        released it on this holder's behalf."""
        return self._core.lost

    @property
    def lost_reason(self) -> Optional[str]:
        return self._core.lost_reason

    @property
    def released(self) -> bool:
        """True once :meth:`release` ran (by us or by cleanup_on_cancellation)."""
        return self._core.released

    @property
    def active(self) -> bool:
        """Neither released nor lost, as far as this client knows."""
        return not (self._core.released or self._core.lost)

    @property
    def held_for(self) -> float:
        """Seconds since the grant."""
        return time.monotonic() - self._core.acquired_monotonic

    @property
    def last_error(self) -> Optional[BaseException]:
        """The last transient renewal error (cleared by the next good renewal)."""
        return self._core.last_error

    # -- actions ----------------------------------------------------------------------

    def renew(self) -> Json:
        """Renews now (the background thread does this by itself).

        Raises:
            LeaseLost: the lease has ended (``lost`` becomes True).
        """
        try:
            return self._core.renew_once()
        except LeaseLost as e:
            self._core.mark_lost(e.message)
            raise

    def release(self) -> bool:
        """Stops renewal and releases the lease. Idempotent; never raises for a lease
        that already ended. Returns True if this call released it."""
        self._finalizer.detach()
        return self._core.release()

    def check_fence(self) -> bool:
        """Asks the service whether this grant's token is still the newest for the lock
        (``POST /api/v1/fence/check``). Call it right before replacing the data the lock
        protects; write only when True. A False answer also marks the lease lost."""
        r = self._core.client.fence_check(self.owner, self.field, self.token)
        current = bool(r.get("current"))
        if not current:
            self._core.mark_lost("fencing token %s is no longer current (newest %s)"
                                 % (self.token, r.get("newest_token")))
        return current

    def raise_if_lost(self) -> None:
        """Raises :class:`LeaseLost` if the lease is known to have ended."""
        if self._core.lost:
            raise LeaseLost("lease_gone", self._core.lost_reason or "the lease has ended")

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "lost" if self.lost else "released" if self.released else "held"
        return "<Lease %s/%s %s token=%s %s>" % (self.owner, self.field or "(main)",
                                                 self.operation, self.token, state)


# --------------------------------------------------------------------------- client


def _taken(lock: Json) -> bool:
    """Is this lock (a per-lock object of the status answer) actually taken?

    Every state but ``free``, except a ``holder_dead`` record of an in-process
    (``library``) holder: its process is gone, so the kernel already dropped its flock
    and the record is a leftover for reconciliation. A ``holder_dead`` *lease* still
    counts: the service keeps the flock until its reaper ends the lease (milliseconds
    after the client's pid dies)."""
    state = lock.get("state")
    if state == "free":
        return False
    if state == "stale" and lock.get("stale_reason") == "holder_dead":
        return lock.get("kind") == "lease"
    return True


class LockLedger:
    """Client of one lockledger service.

    Args:
        base_url: the service, e.g. ``http://127.0.0.1:8787``.
        token: the user token, if the service was started with one.
        admin_token: the admin token (``STORAGE/admin-token``), for force clears.
        holder: the holder label recorded with every lease and as the actor of clears.
        timeout: socket timeout in seconds for one request (acquire adds its wait).

    Proxies from the environment are ignored: the service is local and checks the
    Host header.
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8787", token: Optional[str] = None,
                 admin_token: Optional[str] = None, holder: str = "chat-app",
                 timeout: float = 70) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.admin_token = admin_token
        self.holder = holder
        self.timeout = float(timeout)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._mu = threading.Lock()
        self._cores: Dict[str, _LeaseCore] = {}

    # -- transport ----------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Optional[Json] = None, *,
                 admin: bool = False, timeout: Optional[float] = None,
                 query: Optional[Dict[str, Any]] = None) -> Json:
        url = self.base_url + path
        if query:
            q = {k: v for k, v in query.items() if v is not None}
            if q:
                url += "?" + urllib.parse.urlencode(q)
        headers = {"Accept": "application/json", "X-Lockledger-Actor": self.holder}
        data: Optional[bytes] = None
        if method in ("POST", "DELETE", "PUT"):
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode("utf-8") if body is not None else b""
        tok = self.admin_token if (admin and self.admin_token) else (self.token or self.admin_token)
        if tok:
            headers["Authorization"] = "Bearer " + tok
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with self._opener.open(req, timeout=timeout or self.timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raw = e.read() or b""
            try:
                decoded = json.loads(raw) if raw else {}
            except ValueError:
                decoded = {}
            raise _error_from(e.code, decoded if isinstance(decoded, dict) else {}, raw) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise LockLedgerError("unreachable", "%s %s: %s" % (method, path, reason)) from None
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            raise LockLedgerError("bad_response", raw[:200].decode("utf-8", "replace")) from None

    def _forget(self, core: _LeaseCore) -> None:
        with self._mu:
            self._cores.pop(core.lease_id, None)

    # -- leases ---------------------------------------------------------------------------

    def lock(self, owner: str, field: Optional[str], operation: str, ttl_ms: int = 30000,
             wait_ms: int = 30000) -> Lease:
        """Acquires ``(owner, field)`` as a lease and starts renewing it every ttl/3.

        The lock is taken by this call; the returned :class:`Lease` is a context
        manager that releases it on exit (also on exceptions)::

            with ll.lock(conv_id, "messages", "send_message") as lease:
                save(data, token=lease.token)

        Sends ``pid=os.getpid()``, so the service ends the lease within about a second
        if this process dies. ``wait_ms`` is capped at 60000 (the service's limit);
        ``0`` fails at once when the lock is taken. Keep a reference to the lease (the
        ``with`` statement does): a lease nobody references is released.

        Raises:
            LockBusy: still held by someone else after ``wait_ms`` (``.holder`` says who).
            LockLedgerError: bad owner/field (400), auth, or the service is unreachable.
        """
        field = _norm_field(field)
        wait_ms = max(0, min(int(wait_ms), MAX_WAIT_MS))
        body = {"holder": self.holder, "operation": operation, "pid": os.getpid(),
                "ttl_ms": int(ttl_ms), "wait_ms": wait_ms}
        grant = self._request(
            "POST", "/api/v1/locks/%s/%s/acquire" % (_q(owner), _q(_path_field(field))), body,
            timeout=max(self.timeout, wait_ms / 1000.0 + 10.0))
        core = _LeaseCore(self, owner, grant.get("field", field), operation, int(ttl_ms), grant)
        with self._mu:
            self._cores[core.lease_id] = core
        lease = Lease(core)
        core.start_renewal()
        return lease

    def _lock_many(self, owner: str, fields: FieldSpec, operation: str, ttl_ms: int,
                   wait_ms: int) -> Dict[str, Lease]:
        """Takes several locks of one owner in one fixed (sorted) order; all or none."""
        order = self.lock_order(fields)
        deadline = time.monotonic() + max(0, wait_ms) / 1000.0
        taken: Dict[str, Lease] = {}
        try:
            for f in order:
                left = max(0, int((deadline - time.monotonic()) * 1000))
                taken[f] = self.lock(owner, f, operation, ttl_ms=ttl_ms, wait_ms=left)
        except BaseException:
            for lease in reversed(list(taken.values())):
                lease.release()
            raise
        return taken

    @staticmethod
    def lock_order(fields: FieldSpec) -> List[str]:
        """The order in which several fields are locked: deduplicated and sorted (the
        main lock ``""`` first). Every caller using one order cannot deadlock."""
        if fields is None or isinstance(fields, str):
            fields = [fields]
        return sorted({_norm_field(f) for f in fields})

    def locked_stream(self, owner: str, fields: FieldSpec, operation: str,
                      generator: Union[Iterable[Any], Callable[[Dict[str, Lease]], Iterable[Any]]],
                      *, cancel: Optional[threading.Event] = None, ttl_ms: int = 30000,
                      wait_ms: int = 30000, on_lost: str = "raise") -> Iterator[Any]:
        """Guards a Flask streaming generator with one or several locks of ``owner``.

        A generator: on its first ``next()`` it takes the locks (several fields in
        :meth:`lock_order`), then yields the chunks of ``generator``. It closes
        ``generator`` (running its ``finally`` blocks while the locks are still held)
        and releases the locks on every path:

        - normal end;
        - an exception in ``generator`` (re-raised);
        - ``close()`` / ``GeneratorExit`` — werkzeug closes the response iterable when
          the client disconnects;
        - ``cancel`` (a :class:`threading.Event`): once set, the stream stops at the
          next chunk (checked before fetching and before yielding each chunk) and ends
          normally.

        ``generator`` may be an iterable, or a callable taking ``{field: Lease}`` (keys
        as in :meth:`lock_order`: ``""`` for the main lock) and returning one, so the
        body can pass ``leases["messages"].token`` to its writes.

        ``on_lost`` says what happens at the next chunk once a lease is lost (force
        clear, expiry, cleanup_on_cancellation): ``"raise"`` (:class:`LeaseLost`),
        ``"stop"`` (end the stream quietly) or ``"ignore"``.

        Raises :class:`LockBusy` from the first ``next()`` if a lock stays busy for
        ``wait_ms`` (in total, over all fields).
        """
        if on_lost not in ("raise", "stop", "ignore"):
            raise ValueError("on_lost must be 'raise', 'stop' or 'ignore'")
        leases: Dict[str, Lease] = {}
        inner: Any = None
        try:
            if cancel is not None and cancel.is_set():
                return
            leases = self._lock_many(owner, fields, operation, ttl_ms, wait_ms)
            if callable(generator) and not hasattr(generator, "__next__"):
                inner = generator(dict(leases))
            else:
                inner = generator
            it = iter(inner)
            while True:
                if cancel is not None and cancel.is_set():
                    return
                if on_lost != "ignore":
                    lost = [lease for lease in leases.values() if lease.lost]
                    if lost:
                        if on_lost == "stop":
                            return
                        lost[0].raise_if_lost()
                try:
                    chunk = next(it)
                except StopIteration:
                    return
                if cancel is not None and cancel.is_set():
                    return
                yield chunk
        finally:
            try:
                # Close the body while the locks are still held, so its finally blocks
                # (saving a partial reply, ...) run under the lock. A generator object
                # that never started (busy, cancelled early) is closed too.
                target = inner if inner is not None else (
                    generator if hasattr(generator, "__next__") else None)
                close = getattr(target, "close", None)
                if close is not None:
                    close()
            finally:
                for lease in reversed(list(leases.values())):
                    lease.release()

    def _live_cores(self, owner: Optional[str] = None) -> List[_LeaseCore]:
        with self._mu:
            return [c for c in self._cores.values() if owner is None or c.owner == owner]

    def release_all(self, owner: Optional[str] = None) -> List[str]:
        """Releases every live lease this client object holds (for ``owner``, or all);
        their holders see ``lost``. Returns the released lock files."""
        released = []
        for core in self._live_cores(owner):
            if core.release(lost_reason="released by this client's cleanup"):
                released.append(core.file or "%s/%s" % (core.owner, core.field))
        return released

    # -- status and clearing -------------------------------------------------------------

    def status(self, owner: str) -> Json:
        """``GET /get_lock_status/{owner}``: ``{conversation_id, locks_status, any_locked,
        stale_locks, can_cleanup, locks: [...]}``; each lock has ``field, file, state
        (free|held|stale), stale_reason, kind, holder, operation, pid, token, clearable,
        note, ...``. Never changes anything."""
        return self._request("GET", "/get_lock_status/%s" % _q(owner))

    def ensure_locks_cleared(self, owner: str, tokens: Optional[Dict[str, int]] = None) -> Json:
        """Safe clear (``POST /ensure_locks_cleared/{owner}``): clears dead holders'
        records and revokes expired leases; live holders come back under ``skipped``.
        With ``tokens`` (``{field: token}`` as shown by :meth:`status`), a lock whose
        token changed since is skipped. Returns ``{success, cleared, skipped, message}``."""
        body = {"tokens": {_norm_field(f): int(t) for f, t in tokens.items()}} if tokens else None
        return self._request("POST", "/ensure_locks_cleared/%s" % _q(owner), body)

    def fence_check(self, owner: str, field: Optional[str], token: int) -> Json:
        """``POST /api/v1/fence/check`` → ``{current: bool, newest_token}``."""
        return self._request("POST", "/api/v1/fence/check",
                             {"owner": owner, "field": _norm_field(field), "token": int(token)})

    def history(self, owner: Optional[str] = None, **filters: Any) -> List[Json]:
        """``GET /api/v1/history`` (newest first). Filters: ``field`` (``main`` for the
        main lock), ``event``, ``holder``, ``since``, ``until``, ``limit``, ``cursor``."""
        q = dict(filters)
        q["owner"] = owner
        return self._request("GET", "/api/v1/history", query=q).get("events", [])

    # -- the five operations of the chat app's plan --------------------------------------

    def wait_for_lock_release(self, owner: str, fields: FieldSpec = None, timeout: float = 30,
                              poll: float = 0.1) -> bool:
        """Waits until none of ``fields`` (default: every lock of the owner) is taken.

        "Taken" as in :meth:`is_any_lock_held`: held, or stale with its flock still
        taken. Returns True once released, False when ``timeout`` seconds pass first.
        Reads status only; never clears anything.
        """
        wanted = None if fields is None else set(self.lock_order(fields))
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            locks = self.status(owner).get("locks", [])
            if not any(_taken(lk) for lk in locks if wanted is None or lk.get("field") in wanted):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(max(poll, 0.01), left))

    def force_clear_all_locks(self, owner: str, reason: str) -> Json:
        """Admin: force-clears every recorded lock of ``owner`` that has a token, using
        the tokens of a fresh status (``POST /force_clear_locks/{owner}``). Live leases
        are revoked (their holders' renewals get 410 and their tokens are fenced out);
        live library holders are asked to let go; external holders cannot be cleared.

        Returns the service's answer ``{success, cleared, failed, details, warning}``
        (``{success: True, cleared: [], failed: [], message}`` when nothing had a token).

        Raises:
            LockLedgerError: 403 ``not_admin`` / 401 without the admin token.
        """
        if not reason or not reason.strip():
            raise ValueError("a force clear needs a reason")
        tokens = {lk["field"]: int(lk["token"]) for lk in self.status(owner).get("locks", [])
                  if lk.get("token") is not None and lk.get("state") != "free"}
        if not tokens:
            return {"success": True, "cleared": [], "failed": [],
                    "message": "no recorded locks on %s" % owner}
        return self._request("POST", "/force_clear_locks/%s" % _q(owner),
                             {"tokens": tokens, "reason": reason}, admin=True)

    def cleanup_on_cancellation(self, owner: str) -> Json:
        """After a stream of ``owner`` was cancelled: releases every lease this client
        object holds for ``owner`` (their holders see ``lost``), then safe-clears the
        owner (stale records and expired leases; live holders are left alone).

        Returns ``{released: [files], cleared: [files], skipped: [...], message}``.
        """
        released = self.release_all(owner)
        r = self.ensure_locks_cleared(owner)
        return {"released": released, "cleared": r.get("cleared", []),
                "skipped": r.get("skipped", []), "message": r.get("message", "")}

    def is_any_lock_held(self, owner: str) -> bool:
        """True if any lock of ``owner`` is taken: held (by a lease, a library holder or
        an external process), or stale while its flock is still taken
        (``lease_expired``, ``held_too_long``, a dead client's lease not yet reaped).
        A ``holder_dead`` leftover of an in-process holder does not count: its flock
        went with its process (see :meth:`get_stale_locks`)."""
        return any(_taken(lk) for lk in self.status(owner).get("locks", []))

    def get_stale_locks(self, owner: str) -> List[str]:
        """The lock-file names of ``owner``'s stale locks (``holder_dead``,
        ``lease_expired``, ``held_too_long``), e.g. ``["conv42_messages.lock"]``."""
        return list(self.status(owner).get("stale_locks", []))
