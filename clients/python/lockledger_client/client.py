"""The HTTP client of one lockledger service (standard library only)."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Iterator, List, Optional

from .errors import Json, LockLedgerError, error_from
from .leases import FieldSpec, Lease, StreamBody, _LeaseCore, lock_order, locked_stream
from .names import norm_field, path_field, quote

__all__ = ["LockLedger", "MAX_WAIT_MS", "DEFAULT_URL"]

#: The service refuses a longer ``wait_ms``.
MAX_WAIT_MS = 60_000
#: Where ``lockledger serve`` listens by default.
DEFAULT_URL = "http://127.0.0.1:8787"


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


def _retry_after(headers: Any) -> Optional[float]:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class LockLedger:
    """Client of one lockledger service.

    Args:
        base_url: the service, e.g. ``http://127.0.0.1:8787``.
        token: the user token, if the service was started with one
            (``--token`` / ``LOCKLEDGER_TOKEN``). Sent on every routine call.
        admin_token: the admin token (``STORAGE/admin-token``). Sent only on admin calls
            (:meth:`force_clear`, :meth:`force_clear_all_locks`, :meth:`sql`), never on
            routine ones: give it only to the code that serves an admin-only route.
        holder: the holder label recorded with every lease and registration, and the
            actor of clears (``X-Lockledger-Actor``).
        timeout: socket timeout in seconds for one request (acquire adds its wait).

    Proxies from the environment are ignored: the service is local and checks the
    Host header. Thread-safe: one client may be shared by every request thread.
    """

    def __init__(self, base_url: str = DEFAULT_URL, token: Optional[str] = None,
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

    def __repr__(self) -> str:
        return "<LockLedger %s holder=%r%s>" % (self.base_url, self.holder,
                                                 " admin" if self.admin_token else "")

    # -- transport ----------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Optional[Json] = None, *,
                 admin: bool = False, timeout: Optional[float] = None,
                 query: Optional[Dict[str, Any]] = None, actor: Optional[str] = None) -> Json:
        url = self.base_url + path
        if query:
            q = {k: v for k, v in query.items() if v is not None}
            if q:
                url += "?" + urllib.parse.urlencode(q)
        headers = {"Accept": "application/json", "X-Lockledger-Actor": actor or self.holder}
        data: Optional[bytes] = None
        if method in ("POST", "DELETE", "PUT"):
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode("utf-8") if body is not None else b""
        # The admin token goes only with admin calls; routine calls carry the user
        # token (or nothing, when the service runs without one).
        tok = self.admin_token if admin else self.token
        if admin and not tok:
            tok = self.token  # the service answers 401/403, which is the truth
        if tok:
            headers["Authorization"] = "Bearer " + tok
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with self._opener.open(req, timeout=timeout or self.timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            try:
                raw = e.read() or b""
            except (OSError, http.client.HTTPException):
                raw = b""
            try:
                decoded = json.loads(raw) if raw else {}
            except ValueError:
                decoded = {}
            raise error_from(e.code, decoded if isinstance(decoded, dict) else {}, raw,
                             _retry_after(e.headers)) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            raise LockLedgerError("unreachable", "%s %s: %s" % (method, path, reason)) from None
        try:
            out = json.loads(raw) if raw else {}
        except ValueError:
            raise LockLedgerError("bad_response", raw[:200].decode("utf-8", "replace")) from None
        if not isinstance(out, dict):
            raise LockLedgerError("bad_response", "expected a JSON object, got %s"
                                  % type(out).__name__)
        return out

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
        field = norm_field(field)
        wait_ms = max(0, min(int(wait_ms), MAX_WAIT_MS))
        body = {"holder": self.holder, "operation": operation, "pid": os.getpid(),
                "ttl_ms": int(ttl_ms), "wait_ms": wait_ms}
        grant = self._request(
            "POST", "/api/v1/locks/%s/%s/acquire" % (quote(owner), quote(path_field(field))),
            body, timeout=max(self.timeout, wait_ms / 1000.0 + 10.0))
        core = _LeaseCore(self, owner, grant.get("field", field), operation, int(ttl_ms), grant)
        with self._mu:
            self._cores[core.lease_id] = core
        lease = Lease(core)
        core.start_renewal()
        return lease

    @staticmethod
    def lock_order(fields: FieldSpec) -> List[str]:
        """The order in which several fields are locked: deduplicated and sorted (the
        main lock ``""`` first). Every caller using one order cannot deadlock."""
        return lock_order(fields)

    def locked_stream(self, owner: str, fields: FieldSpec, operation: str,
                      generator: StreamBody, *, cancel: Optional[threading.Event] = None,
                      ttl_ms: int = 30000, wait_ms: int = 30000,
                      on_lost: str = "raise") -> Iterator[Any]:
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
        return locked_stream(self, owner, fields, operation, generator, cancel=cancel,
                             ttl_ms=ttl_ms, wait_ms=wait_ms, on_lost=on_lost)

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

    # -- registrations (a process that took the flock itself) -----------------------------

    def register(self, owner: str, field: Optional[str], operation: str, *,
                 pid: Optional[int] = None, namespace: Optional[str] = None,
                 wait_ms: int = 0, timeout: Optional[float] = None) -> Json:
        """Records that process ``pid`` (default: this one) holds ``(owner, field)``'s
        lock file's flock, which it took itself
        (``POST /api/v1/locks/{owner}/{field}/register``). The service checks
        ``/proc/locks`` first and answers 409 ``not_holding`` unless that pid holds
        that very file. Returns ``{registration_id, token, owner, field, file}``.
        :class:`~lockledger_client.FileLock` does this for you. With a shared
        (PostgreSQL) registry the registration is the grant across hosts: ``wait_ms``
        is how long the service waits while another host holds the lock (409 ``busy``
        after that)."""
        body: Json = {"pid": os.getpid() if pid is None else int(pid), "holder": self.holder,
                      "operation": operation}
        if wait_ms:
            body["wait_ms"] = int(wait_ms)
        return self._request(
            "POST", "/api/v1/locks/%s/%s/register" % (quote(owner), quote(path_field(
                norm_field(field)))), body, timeout=timeout,
            query={"namespace": namespace} if namespace else None)

    def unregister(self, registration_id: str, *, timeout: Optional[float] = None) -> Json:
        """Ends a registration (``DELETE /api/v1/registrations/{id}``) →
        ``{released, held_ms}``. Raises :class:`LeaseLost` (410) if it had already
        ended (reconciled, cleared)."""
        return self._request("DELETE", "/api/v1/registrations/%s" % quote(registration_id),
                             timeout=timeout)

    # -- status and clearing -------------------------------------------------------------

    def status(self, owner: str, *, timeout: Optional[float] = None) -> Json:
        """``GET /get_lock_status/{owner}``: ``{conversation_id, locks_status, any_locked,
        stale_locks, can_cleanup, locks: [...]}``; each lock has ``field, file, state
        (free|held|stale), stale_reason, kind, holder, operation, pid, token, clearable,
        note, ...``. Never changes anything."""
        return self._request("GET", "/get_lock_status/%s" % quote(owner), timeout=timeout)

    def ensure_locks_cleared(self, owner: str, tokens: Optional[Dict[str, int]] = None, *,
                             actor: Optional[str] = None,
                             timeout: Optional[float] = None) -> Json:
        """Safe clear (``POST /ensure_locks_cleared/{owner}``): clears dead holders'
        records and revokes expired leases; live holders come back under ``skipped``.
        With ``tokens`` (``{field: token}`` as shown by :meth:`status`), a lock whose
        token changed since is skipped. Returns ``{success, cleared, skipped, message}``;
        ``success`` is true only when nothing of the owner is held or stale afterwards."""
        body = {"tokens": {norm_field(f): int(t) for f, t in tokens.items()}} if tokens else None
        return self._request("POST", "/ensure_locks_cleared/%s" % quote(owner), body,
                             actor=actor, timeout=timeout)

    def force_clear(self, owner: str, tokens: Dict[str, int], reason: str, *,
                    actor: Optional[str] = None, timeout: Optional[float] = None) -> Json:
        """Admin: force-clears the locks of ``owner`` whose tokens you were shown
        (``POST /force_clear_locks/{owner}`` with ``{tokens: {field: token}, reason}``).
        Returns ``{success, cleared, failed, details, warning}``. Sends the admin token."""
        if not reason or not reason.strip():
            raise ValueError("a force clear needs a reason")
        body = {"tokens": {norm_field(f): int(t) for f, t in tokens.items()},
                "reason": reason}
        return self._request("POST", "/force_clear_locks/%s" % quote(owner), body,
                             admin=True, actor=actor, timeout=timeout)

    def fence_check(self, owner: str, field: Optional[str], token: int, *,
                    namespace: Optional[str] = None,
                    timeout: Optional[float] = None) -> Json:
        """``POST /api/v1/fence/check`` → ``{current: bool, newest_token}``."""
        body: Json = {"owner": owner, "field": norm_field(field), "token": int(token)}
        if namespace:
            body["namespace"] = namespace
        return self._request("POST", "/api/v1/fence/check", body, timeout=timeout)

    def history(self, owner: Optional[str] = None, **filters: Any) -> List[Json]:
        """``GET /api/v1/history`` (newest first). Filters: ``field`` (``main`` for the
        main lock), ``event``, ``holder``, ``since``, ``until``, ``limit``, ``cursor``."""
        q = dict(filters)
        q["owner"] = owner
        events = self._request("GET", "/api/v1/history", query=q).get("events", [])
        return list(events) if isinstance(events, list) else []

    def sql(self, sql: str) -> Json:
        """Admin: a read-only SQL query (``POST /api/v1/sql``) →
        ``{columns, rows, truncated}``. Sends the admin token."""
        return self._request("POST", "/api/v1/sql", {"sql": sql}, admin=True)

    # -- the five operations of the chat app's plan --------------------------------------

    def wait_for_lock_release(self, owner: str, fields: FieldSpec = None, timeout: float = 30,
                              poll: float = 0.1) -> bool:
        """Waits until none of ``fields`` (default: every lock of the owner) is taken.

        "Taken" as in :meth:`is_any_lock_held`: held, or stale with its flock still
        taken. Returns True once released, False when ``timeout`` seconds pass first.
        Reads status only; never clears anything.
        """
        wanted = None if fields is None else set(lock_order(fields))
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
        live library and registered holders are marked revoked (their fence checks fail
        from then on); external holders cannot be cleared.

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
        return self.force_clear(owner, tokens, reason)

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
        """True if any lock of ``owner`` is taken: held (by a lease, a library or
        registered holder, or an external process), or stale while its flock is still
        taken (``lease_expired``, ``held_too_long``, a dead client's lease not yet
        reaped). A ``holder_dead`` leftover of an in-process holder does not count: its
        flock went with its process (see :meth:`get_stale_locks`)."""
        return any(_taken(lk) for lk in self.status(owner).get("locks", []))

    def get_stale_locks(self, owner: str) -> List[str]:
        """The lock-file names of ``owner``'s stale locks (``holder_dead``,
        ``lease_expired``, ``held_too_long``), e.g. ``["conv42_messages.lock"]``."""
        return list(self.status(owner).get("stale_locks", []))
