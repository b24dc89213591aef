"""Leases: locks the service holds for this process, renewed in the background, and a
guard for Flask streaming generators that releases them on every path."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional,
                    Sequence, Union)

from .errors import Json, LeaseLost, LockLedgerError
from .names import norm_field, quote

if TYPE_CHECKING:  # pragma: no cover
    from .client import LockLedger

__all__ = ["Lease", "FieldSpec", "lock_order", "locked_stream"]

log = logging.getLogger("lockledger_client")

FieldSpec = Union[str, None, Sequence[Optional[str]]]


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
            self.client._request("DELETE", "/api/v1/leases/%s" % quote(self.lease_id),
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
        resp = self.client._request("POST", "/api/v1/leases/%s/renew" % quote(self.lease_id),
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

    @property
    def owner(self) -> str:
        return self._core.owner

    @property
    def field(self) -> str:
        return self._core.field

    @property
    def operation(self) -> str:
        return self._core.operation

    @property
    def lease_id(self) -> str:
        return self._core.lease_id

    @property
    def token(self) -> int:
        return self._core.token

    @property
    def expires_at(self) -> Optional[str]:
        return self._core.expires_at

    @property
    def file(self) -> Optional[str]:
        return self._core.file

    @property
    def ttl_ms(self) -> int:
        return self._core.ttl_ms

    @property
    def renewals(self) -> int:
        return self._core.renewals

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



def lock_order(fields: FieldSpec) -> List[str]:
    """The order in which several fields are locked: deduplicated and sorted (the main
    lock ``""`` first). Every caller using one order cannot deadlock."""
    if fields is None or isinstance(fields, str):
        fields = [fields]
    return sorted({norm_field(f) for f in fields})


def lock_many(client: "LockLedger", owner: str, fields: FieldSpec, operation: str,
              ttl_ms: int, wait_ms: int) -> Dict[str, Lease]:
    """Takes several locks of one owner in :func:`lock_order`; all or none."""
    deadline = time.monotonic() + max(0, wait_ms) / 1000.0
    taken: Dict[str, Lease] = {}
    try:
        for f in lock_order(fields):
            left = max(0, int((deadline - time.monotonic()) * 1000))
            taken[f] = client.lock(owner, f, operation, ttl_ms=ttl_ms, wait_ms=left)
    except BaseException:
        for lease in reversed(list(taken.values())):
            lease.release()
        raise
    return taken


StreamBody = Union[Iterable[Any], Callable[[Dict[str, Lease]], Iterable[Any]]]


def locked_stream(client: "LockLedger", owner: str, fields: FieldSpec, operation: str,
                  generator: StreamBody, *, cancel: Optional[threading.Event] = None,
                  ttl_ms: int = 30000, wait_ms: int = 30000,
                  on_lost: str = "raise") -> Iterator[Any]:
    """The guard behind :meth:`LockLedger.locked_stream` (see there)."""
    if on_lost not in ("raise", "stop", "ignore"):
        raise ValueError("on_lost must be 'raise', 'stop' or 'ignore'")
    return _guarded(client, owner, fields, operation, generator, cancel, ttl_ms, wait_ms,
                    on_lost)


def _guarded(client: "LockLedger", owner: str, fields: FieldSpec, operation: str,
             generator: StreamBody, cancel: Optional[threading.Event], ttl_ms: int,
             wait_ms: int, on_lost: str) -> Iterator[Any]:
    leases: Dict[str, Lease] = {}
    inner: Any = None
    try:
        if cancel is not None and cancel.is_set():
            return
        leases = lock_many(client, owner, fields, operation, ttl_ms, wait_ms)
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
