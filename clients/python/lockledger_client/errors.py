"""Errors answered by the lockledger service, or raised when it cannot be reached."""

from __future__ import annotations

from typing import Any, Dict, Optional

Json = Dict[str, Any]

__all__ = ["Json", "LockLedgerError", "LockBusy", "LeaseLost", "error_from"]


class LockLedgerError(Exception):
    """An error answered by the service (or the service could not be reached).

    Attributes:
        code: the service's error code (``busy``, ``lease_gone``, ``not_admin``,
            ``invalid_id``, ``not_clearable``, ``not_holding``, ...) or ``unreachable`` /
            ``bad_response`` for transport problems.
        message: the human-readable message.
        status: the HTTP status, or ``None`` when no HTTP answer was received.
        body: the decoded JSON body of the error answer, if any.
        retry_after: seconds from a ``Retry-After`` header (503 ``too_many_waiters``).
    """

    def __init__(self, code: str, message: str, status: Optional[int] = None,
                 body: Optional[Json] = None, retry_after: Optional[float] = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.code = code
        self.message = message
        self.status = status
        self.body: Json = body or {}
        self.retry_after = retry_after

    @property
    def unavailable(self) -> bool:
        """True when the service did not answer usefully: unreachable, timed out, a
        non-JSON answer, or a 5xx. The caller may go on without it (a drop-in
        :class:`~lockledger_client.FileLock` still locks)."""
        return self.status is None or self.status >= 500


class LockBusy(LockLedgerError):
    """The lock stayed held by someone else for the whole wait (HTTP 409 ``busy``).

    ``holder`` is the service's description of the current holder: ``holder``,
    ``operation``, ``pid``, ``host``, ``kind``, ``acquired_at``, ``age_s``, ``token``,
    ``note``, ...
    """

    def __init__(self, code: str, message: str, status: Optional[int] = None,
                 body: Optional[Json] = None, retry_after: Optional[float] = None) -> None:
        super().__init__(code, message, status, body, retry_after)
        holder = (body or {}).get("holder")
        self.holder: Json = holder if isinstance(holder, dict) else {}


class LeaseLost(LockLedgerError):
    """The lease ended without this client releasing it: it expired, was force-cleared
    by an admin, or was released by :meth:`LockLedger.cleanup_on_cancellation`.
    Stop writing: the data store refuses the old token from now on."""


def error_from(status: int, body: Json, raw: bytes,
               retry_after: Optional[float] = None) -> LockLedgerError:
    """The exception for an HTTP error answer."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code = str(err.get("code", "error"))
        message = str(err.get("message", ""))
    else:
        code = "http_%d" % status
        message = raw[:200].decode("utf-8", "replace")
    if code == "busy":
        return LockBusy(code, message, status, body, retry_after)
    if status == 410 or code == "lease_gone":
        return LeaseLost(code, message, status, body, retry_after)
    return LockLedgerError(code, message, status, body, retry_after)
