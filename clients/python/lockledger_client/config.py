"""The process-wide settings of the drop-in :class:`~lockledger_client.FileLock`: which
service it registers with, which directory holds the service's lock files, and how
patient a registration may be.

Set them once at start-up with :func:`configure`, or let the environment speak:

- ``LOCKLEDGER_URL``   the service (default ``http://127.0.0.1:8787``);
- ``LOCKLEDGER_TOKEN`` the service's user token, if it was started with one;
- ``LOCKLEDGER_LOCKS_DIR`` the service's locks directory (``<storage>/locks``); without
  it, a lock file is registered when its directory is called ``locks``;
- ``LOCKLEDGER_HOLDER`` the holder label (default ``chat-app``);
- ``LOCKLEDGER_REGISTER=0`` turns registration off (a plain ``filelock``).
"""

from __future__ import annotations

import os
import threading
from typing import Optional, Sequence, Tuple, Union

from .client import DEFAULT_URL, LockLedger
from .names import DEFAULT_NAMESPACES, Namespace

__all__ = ["Settings", "configure", "settings"]

PathLike = Union[str, "os.PathLike[str]"]


class Settings:
    """What :class:`~lockledger_client.FileLock` uses unless told otherwise."""

    def __init__(self) -> None:
        self._client: Optional[LockLedger] = None
        #: Absolute real path of the service's locks directory, or None (see module doc).
        self.locks_dir: Optional[str] = None
        self.namespaces: Tuple[Namespace, ...] = DEFAULT_NAMESPACES
        #: Seconds one registration or unregistration may take before the lock goes on
        #: without it.
        self.register_timeout: float = 0.5
        #: After the service was unreachable (or answered 5xx), seconds during which
        #: registrations are not tried again, so a down service costs nothing per lock.
        self.retry_after: float = 5.0
        self.enabled: bool = True
        #: The service runs on a shared PostgreSQL registry (several hosts): a
        #: registration is the grant across hosts, so a refusal or an unreachable
        #: service gives the flock back and fails the acquire (fail closed).
        self.distributed: bool = False
        self._from_env()

    def _from_env(self) -> None:
        locks_dir = os.environ.get("LOCKLEDGER_LOCKS_DIR")
        self.locks_dir = os.path.realpath(locks_dir) if locks_dir else None
        self.enabled = os.environ.get("LOCKLEDGER_REGISTER", "1").strip().lower() not in (
            "0", "false", "no", "off")
        self.distributed = os.environ.get("LOCKLEDGER_DISTRIBUTED", "0").strip().lower() in (
            "1", "true", "yes", "on")

    @property
    def client(self) -> LockLedger:
        """The client of the service (built from the environment on first use)."""
        with _mu:
            if self._client is None:
                self._client = LockLedger(
                    os.environ.get("LOCKLEDGER_URL") or DEFAULT_URL,
                    token=os.environ.get("LOCKLEDGER_TOKEN") or None,
                    holder=os.environ.get("LOCKLEDGER_HOLDER") or "chat-app",
                    timeout=10)
            return self._client


_mu = threading.Lock()
_settings = Settings()


def settings() -> Settings:
    """The current process-wide settings."""
    return _settings


def configure(url: Optional[str] = None, token: Optional[str] = None, *,
              client: Optional[LockLedger] = None, holder: Optional[str] = None,
              locks_dir: Optional[PathLike] = None,
              namespaces: Optional[Sequence[Namespace]] = None,
              register_timeout: Optional[float] = None, retry_after: Optional[float] = None,
              enabled: Optional[bool] = None,
              distributed: Optional[bool] = None) -> LockLedger:
    """Sets, once at start-up, what every :class:`~lockledger_client.FileLock` without a
    ``client=`` of its own uses, and returns that client::

        import lockledger_client
        lockledger_client.configure("http://127.0.0.1:8787", token=os.environ["LOCKLEDGER_TOKEN"],
                                    locks_dir=os.path.join(STORAGE, "locks"))

    Args:
        url, token, holder: build a new client (unset ones from the environment).
        client: use this client instead (its admin token, if any, is never sent by a
            FileLock: registrations are routine calls).
        locks_dir: the service's locks directory; only lock files directly inside it
            are registered (others, like per-user index locks elsewhere, stay plain
            file locks). Default: ``LOCKLEDGER_LOCKS_DIR``, else any directory named
            ``locks``.
        namespaces: the service's namespaces, if ``lockledger.toml`` changes them.
        register_timeout: seconds a registration may take (default 0.5).
        retry_after: seconds to leave a down service alone (default 5).
        enabled: False makes every FileLock a plain ``filelock.FileLock``.
        distributed: True when the service runs with ``--database postgres://...``
            (several hosts share the locks): each acquire then also waits for the grant
            across hosts (within the acquire's timeout) and fails with
            ``filelock.Timeout`` when it is refused, or with the service's error when
            the service cannot be reached; the flock is given back either way. Default:
            ``LOCKLEDGER_DISTRIBUTED``.
    """
    s = _settings
    if client is None and (url is not None or token is not None or holder is not None):
        client = LockLedger(url or os.environ.get("LOCKLEDGER_URL") or DEFAULT_URL,
                            token=token if token is not None
                            else (os.environ.get("LOCKLEDGER_TOKEN") or None),
                            holder=holder or os.environ.get("LOCKLEDGER_HOLDER") or "chat-app",
                            timeout=10)
    if client is not None:
        with _mu:
            s._client = client
    if locks_dir is not None:
        s.locks_dir = os.path.realpath(os.fspath(locks_dir))
    if namespaces is not None:
        s.namespaces = tuple(namespaces)
    if register_timeout is not None:
        s.register_timeout = float(register_timeout)
    if retry_after is not None:
        s.retry_after = float(retry_after)
    if enabled is not None:
        s.enabled = bool(enabled)
    if distributed is not None:
        s.distributed = bool(distributed)
    return s.client
