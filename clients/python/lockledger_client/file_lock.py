"""A drop-in for ``filelock.FileLock`` that tells lockledger who holds the lock.

The kernel lock is taken by ``filelock`` itself, exactly as the chat app's other
processes take it, so the two exclude each other both ways; exclusion never depends on
the service. Once the flock is taken, the holder is *registered* with lockledger
(``POST /api/v1/locks/{owner}/{field}/register``: the service checks ``/proc/locks``
and records pid, holder, operation and a fencing token). On the last release the
registration is ended first, then the flock is let go.

If the service is down, slow (``register_timeout``, default 0.5 s) or refuses, the lock
works all the same: it shows in lockledger as an ``external`` holder, and one warning
is logged (not one per acquire; registrations are not retried for ``retry_after``
seconds after the service was unreachable).

Migration of a call site is one import::

    from lockledger_client import FileLock     # was: from filelock import FileLock

    lock = FileLock(f"{location}.lock")        # same arguments as filelock's
    with lock:                                 # operation = the calling function's name
        ...
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import types
import weakref
from typing import Any, Dict, Optional, Tuple, Type, TYPE_CHECKING

from .client import LockLedger
from .config import settings
from .errors import Json, LockLedgerError
from .names import LockName, parse_lock_name

if TYPE_CHECKING:  # pragma: no cover
    import filelock as _filelock

__all__ = ["FileLock", "caller_operation"]

log = logging.getLogger("lockledger_client")

#: Marks an argument the caller did not give, so filelock's own default applies.
_UNSET: Any = object()


def _import_filelock() -> Any:
    try:
        import filelock
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "lockledger_client.FileLock takes its locks through the filelock package: "
            "pip install 'lockledger-client[filelock]'") from e
    return filelock


# --------------------------------------------------------------------------- operation

_SKIPPED_PACKAGES = ("lockledger_client", "filelock")
_SKIPPED_FUNCTIONS = ("__enter__", "__aenter__")


def caller_operation(frame: Optional[types.FrameType]) -> str:
    """The operation name for a lock taken from ``frame``: the first function up the
    stack that is not lockledger_client's or filelock's, nor a context manager's
    ``__enter__``. A lock used as a decorator (``@FileLock(path)``) is named after the
    decorated function; one taken at module level after the module (``app``); a lambda
    or generator expression as ``lambda`` / ``genexpr``."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "") or ""
        name = frame.f_code.co_name
        if module.split(".", 1)[0] in _SKIPPED_PACKAGES or name in _SKIPPED_FUNCTIONS:
            frame = frame.f_back
            continue
        if module == "contextlib":
            func = frame.f_locals.get("func") if name == "inner" else None
            if func is not None and callable(func):
                return str(getattr(func, "__name__", name))
            frame = frame.f_back
            continue
        if name == "<module>":
            return module or "module"
        return name.strip("<>") or "unknown"
    return "unknown"


def _label(text: str) -> str:
    """An operation label the service accepts: printable, at most 200 bytes."""
    text = "".join(c if c.isprintable() else " " for c in text).strip() or "unknown"
    return text.encode("utf-8")[:200].decode("utf-8", "ignore")


# --------------------------------------------------------------------------- registrar


class _Health:
    """How the service answered registrations lately, per client (warn once)."""

    def __init__(self) -> None:
        self.mu = threading.Lock()
        self.warned: Dict[str, bool] = {}
        self.down_until = 0.0

    def warn_once(self, kind: str, message: str, *args: Any) -> None:
        with self.mu:
            first = not self.warned.get(kind)
            self.warned[kind] = True
        if first:
            log.warning(message + " (logged once; the lock works without lockledger and "
                        "shows there as an external holder)", *args)
        else:
            log.debug(message, *args)

    def ok(self) -> None:
        with self.mu:
            was_down = self.warned.pop("unavailable", False)
            self.down_until = 0.0
        if was_down:
            log.info("lockledger: registrations work again")


_health: "weakref.WeakKeyDictionary[LockLedger, _Health]" = weakref.WeakKeyDictionary()
_health_mu = threading.Lock()


def _health_of(client: LockLedger) -> _Health:
    with _health_mu:
        h = _health.get(client)
        if h is None:
            h = _health[client] = _Health()
        return h


class _Hold:
    """This thread's (or, with ``thread_local=False``, the lock's) registration."""

    def __init__(self) -> None:
        self.attempted = False
        self.registration: Optional[Json] = None
        self.client: Optional[LockLedger] = None
        self.lost = False
        self.lost_reason: Optional[str] = None
        self.operation: Optional[str] = None


class _Shared:
    """Registration state attached to one filelock object (shared by every wrapper of a
    singleton filelock), per thread when the filelock is thread-local."""

    def __init__(self, thread_local: bool) -> None:
        self.mu = threading.RLock()
        self._local: Optional[threading.local] = threading.local() if thread_local else None
        self._hold = _Hold()

    def hold(self) -> _Hold:
        if self._local is None:
            return self._hold
        h: Optional[_Hold] = getattr(self._local, "hold", None)
        if h is None:
            h = _Hold()
            self._local.hold = h
        return h


_shared: "weakref.WeakKeyDictionary[Any, _Shared]" = weakref.WeakKeyDictionary()
_shared_mu = threading.Lock()


def _shared_of(inner: Any, thread_local: bool) -> _Shared:
    with _shared_mu:
        s = _shared.get(inner)
        if s is None:
            s = _shared[inner] = _Shared(thread_local)
        return s


def _in_locks_dir(path: str, locks_dir: Optional[str]) -> bool:
    parent = os.path.dirname(os.path.abspath(path))
    if locks_dir is None:
        return os.path.basename(parent) == "locks"
    try:
        return os.path.realpath(parent) == locks_dir
    except OSError:  # pragma: no cover
        return False


# --------------------------------------------------------------------------- FileLock


class _AcquireReturnProxy:
    """What :meth:`FileLock.acquire` returns: ``with lock.acquire(timeout=5):`` releases
    on exit (entering it does not acquire again), like filelock's."""

    def __init__(self, lock: "FileLock") -> None:
        self.lock = lock

    def __enter__(self) -> "FileLock":
        return self.lock

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc_value: Optional[BaseException],
                 traceback: Optional[types.TracebackType]) -> None:
        self.lock.release()


class FileLock(contextlib.ContextDecorator):
    """``filelock.FileLock`` that registers its holder with lockledger.

    Takes the same arguments as ``filelock.FileLock`` (``lock_file, timeout=-1, mode,
    thread_local=True`` and filelock's keyword options, passed through unchanged) and
    behaves the same: :meth:`acquire` (``timeout``, ``poll_interval``, ``blocking``),
    :meth:`release` (``force``), :attr:`is_locked`, :attr:`lock_file`,
    :attr:`lock_counter`, context manager and decorator, reentrant (only the first level
    takes the flock and registers, only the last releases and unregisters),
    ``filelock.Timeout`` when the wait runs out.

    Extra keyword arguments:
        operation: what the holder is doing, shown in the Lock Status modal (default:
            the name of the function that takes the lock).
        client: the :class:`~lockledger_client.LockLedger` to register with (default:
            the one set by :func:`~lockledger_client.configure`, or from
            ``LOCKLEDGER_URL`` / ``LOCKLEDGER_TOKEN``).
        owner, field, namespace: the lock's identity in lockledger (default: read from
            the file name by the service's patterns, see
            :func:`~lockledger_client.parse_lock_name`).

    Only a lock file inside the service's locks directory with a configured field is
    registered; any other stays a plain filelock (see :func:`~lockledger_client.configure`).

    While held: :attr:`token` is the registration's fencing token (None when not
    registered), :meth:`check_fence` asks whether it is still current, and :attr:`lost`
    is True once an admin force-cleared it.
    """

    def __init__(self, lock_file: "str | os.PathLike[str]", timeout: float = -1,
                 mode: int = _UNSET, thread_local: bool = True, *,
                 operation: Optional[str] = None, client: Optional[LockLedger] = None,
                 owner: Optional[str] = None, field: Optional[str] = None,
                 namespace: Optional[str] = None, **filelock_options: Any) -> None:
        fl = _import_filelock()
        args: Tuple[Any, ...] = (lock_file, timeout) if mode is _UNSET else (
            lock_file, timeout, mode)
        if not thread_local:
            filelock_options["thread_local"] = False
        self._inner: "_filelock.BaseFileLock" = fl.FileLock(*args, **filelock_options)
        self._shared = _shared_of(self._inner, thread_local)
        self._operation = operation
        self._client = client
        path = os.fspath(lock_file)
        name: Optional[LockName]
        if owner is not None:
            name = LockName(namespace or settings().namespaces[0].name, owner,
                            field if field is not None else "", True)
        else:
            name = parse_lock_name(os.path.basename(path), settings().namespaces)
            if name is not None and field is not None:
                name = name._replace(field=field)
            if name is not None and namespace is not None:
                name = name._replace(namespace=namespace)
        self._name = name
        self._explicit = owner is not None
        self._path = path

    # -- filelock's attributes ---------------------------------------------------------

    @property
    def lock_file(self) -> str:
        """The path of the lock file."""
        return str(self._inner.lock_file)

    @property
    def is_locked(self) -> bool:
        """True while this object (this thread, for a thread-local lock) holds it."""
        return bool(self._inner.is_locked)

    @property
    def lock_counter(self) -> int:
        """How many times it was acquired and not yet released (reentrancy)."""
        return int(self._inner.lock_counter)

    @property
    def timeout(self) -> float:
        """The default timeout of :meth:`acquire`, in seconds (negative: forever)."""
        return float(self._inner.timeout)

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._inner.timeout = value

    @property
    def filelock(self) -> "_filelock.BaseFileLock":
        """The ``filelock.FileLock`` that takes the kernel lock."""
        return self._inner

    def __getattr__(self, name: str) -> Any:
        # Any other filelock attribute (mode, blocking, poll_interval, is_singleton, ...).
        if name.startswith("__") or "_inner" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["_inner"], name)

    # -- lockledger's view -----------------------------------------------------------------

    @property
    def owner(self) -> Optional[str]:
        """The lock's owner in lockledger (None when the file name fits no pattern)."""
        return self._name.owner if self._name else None

    @property
    def field(self) -> Optional[str]:
        """The lock's field in lockledger (``""`` for the main lock)."""
        return self._name.field if self._name else None

    @property
    def namespace(self) -> Optional[str]:
        return self._name.namespace if self._name else None

    @property
    def registered(self) -> bool:
        """True while the current hold is registered with lockledger."""
        return self._shared.hold().registration is not None

    @property
    def token(self) -> Optional[int]:
        """The fencing token of the current hold's registration (None when the lock is
        not held or not registered: service down, refused, or not a lockledger lock)."""
        reg = self._shared.hold().registration
        return int(reg["token"]) if reg is not None else None

    @property
    def registration_id(self) -> Optional[str]:
        reg = self._shared.hold().registration
        return str(reg["registration_id"]) if reg is not None else None

    @property
    def operation(self) -> Optional[str]:
        """The operation the current (or last) hold was registered with."""
        return self._shared.hold().operation or self._operation

    def check_fence(self) -> bool:
        """Asks lockledger whether this hold's token is still the newest grant of the lock
        (``POST /api/v1/fence/check``); False once an admin force-cleared it (then
        :attr:`lost` is True too). Call it right before replacing the data the lock
        protects, and write only when True.

        True for a hold that is not registered (nobody could have revoked it).

        Raises:
            LockLedgerError: the service could not answer for a registered hold.
        """
        hold = self._shared.hold()
        reg, client, name = hold.registration, hold.client, self._name
        if hold.lost:
            return False
        if reg is None or client is None or name is None:
            return True
        r = client.fence_check(name.owner, name.field, int(reg["token"]),
                               namespace=name.namespace,
                               timeout=max(settings().register_timeout, 2.0))
        current = bool(r.get("current"))
        if not current:
            hold.lost = True
            hold.lost_reason = ("token %s is no longer current (newest %s): the lock was "
                                "force-cleared" % (reg["token"], r.get("newest_token")))
            log.warning("lockledger: %s (%s) %s", self.lock_file, hold.operation,
                        hold.lost_reason)
        return current

    @property
    def lost(self) -> bool:
        """True once lockledger revoked this hold (an admin force-cleared it): stop
        writing. Asks the service (one short fence check) while a registered hold is
        not yet known lost; False when it cannot answer or the hold is not registered."""
        hold = self._shared.hold()
        if hold.lost:
            return True
        if hold.registration is None:
            return False
        try:
            return not self.check_fence()
        except LockLedgerError:
            return False

    @property
    def lost_reason(self) -> Optional[str]:
        return self._shared.hold().lost_reason

    # -- acquire and release -----------------------------------------------------------------

    def acquire(self, timeout: Optional[float] = None, poll_interval: Any = _UNSET, *,
                poll_intervall: Any = _UNSET, blocking: Any = _UNSET,
                **options: Any) -> _AcquireReturnProxy:
        """Acquires the lock (filelock's ``acquire``: same arguments, same
        ``filelock.Timeout``), then, on the first level, registers the holder.
        Returns a proxy that releases on ``__exit__``."""
        kw: Dict[str, Any] = dict(options)
        if poll_interval is not _UNSET:
            kw["poll_interval"] = poll_interval
        if poll_intervall is not _UNSET:
            kw["poll_intervall"] = poll_intervall
        if blocking is not _UNSET:
            kw["blocking"] = blocking
        started = time.monotonic()
        self._inner.acquire(timeout, **kw)
        try:
            self._register(sys._getframe(1), self._deadline(timeout, kw, started))
        except BaseException:
            # Interrupted while registering (KeyboardInterrupt, ...): give the level back.
            self.release()
            raise
        return _AcquireReturnProxy(self)

    def release(self, force: bool = False) -> None:
        """Releases one level (all with ``force``); the last one ends the registration,
        then lets go of the flock."""
        if self._inner.is_locked and (force or self._inner.lock_counter <= 1):
            self._unregister()
        self._inner.release(force=force)

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc_value: Optional[BaseException],
                 traceback: Optional[types.TracebackType]) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "locked" if self.is_locked else "unlocked"
        if self.registered:
            state += " token=%s" % self.token
        return "<lockledger_client.FileLock %s %s>" % (self.lock_file, state)

    # -- registration ------------------------------------------------------------------------

    def _deadline(self, timeout: Optional[float], kw: Dict[str, Any],
                  started: float) -> Optional[float]:
        """When this acquire's wait ends (monotonic; None: never), as filelock read it."""
        blocking = kw.get("blocking", getattr(self._inner, "blocking", True))
        if not blocking:
            return started
        t = self._inner.timeout if timeout is None else timeout
        return None if t < 0 else started + t

    def _register_distributed(self, client: LockLedger, name: LockName, operation: str,
                              deadline: Optional[float]) -> Json:
        """Registers as the grant across hosts, waiting in the service (at most 60 s per
        call) until ``deadline``; a refusal at the deadline is ``filelock.Timeout``."""
        s = settings()
        while True:
            left = 60.0 if deadline is None else max(0.0, min(60.0, deadline - time.monotonic()))
            try:
                return client.register(name.owner, name.field, operation,
                                       namespace=name.namespace, wait_ms=int(left * 1000),
                                       timeout=s.register_timeout + left)
            except LockLedgerError as e:
                if e.code in ("busy", "too_many_waiters") and (
                        deadline is None or time.monotonic() < deadline):
                    continue
                if e.code == "busy":
                    raise _import_filelock().Timeout(self.lock_file) from e
                raise

    def _register(self, frame: Optional[types.FrameType],
                  deadline: Optional[float] = None) -> None:
        shared = self._shared
        with shared.mu:
            hold = shared.hold()
            if hold.attempted or not self._inner.is_locked:
                return
            hold.attempted = True
            hold.registration = None
            hold.lost = False
            hold.lost_reason = None
            hold.operation = _label(self._operation or caller_operation(frame))
            hold.client = None
            s = settings()
            name = self._name
            if (not s.enabled or name is None or not name.configured
                    or (not self._explicit and not _in_locks_dir(self._path, s.locks_dir))):
                return
            client = self._client or s.client
            if s.distributed:
                # Fail closed: without the grant across hosts the flock is given back
                # (by acquire) and the error raised.
                hold.registration = self._register_distributed(client, name, hold.operation,
                                                               deadline)
                hold.client = client
                return
            health = _health_of(client)
            if health.down_until > time.monotonic():
                return
            try:
                reg = client.register(name.owner, name.field, hold.operation,
                                      namespace=name.namespace, timeout=s.register_timeout)
            except LockLedgerError as e:
                if e.unavailable:
                    health.down_until = time.monotonic() + s.retry_after
                    health.warn_once("unavailable", "lockledger: cannot register %s with %s: %s",
                                     os.path.basename(self._path), client.base_url, e)
                else:
                    health.warn_once(e.code, "lockledger: the service refused to register "
                                     "%s: %s", os.path.basename(self._path), e)
                return
            health.ok()
            hold.registration = reg
            hold.client = client

    def _unregister(self) -> None:
        shared = self._shared
        with shared.mu:
            hold = shared.hold()
            reg, client = hold.registration, hold.client
            hold.attempted = False
            hold.registration = None
            hold.client = None
        if reg is None or client is None:
            return
        try:
            client.unregister(str(reg["registration_id"]),
                              timeout=settings().register_timeout)
        except LockLedgerError as e:
            # Gone already (force-cleared, reconciled), or the service is down: the
            # service reconciles the record once it sees the flock let go.
            log.debug("lockledger: unregistering %s: %s", os.path.basename(self._path), e)
