"""A Flask blueprint serving the chat app's three lock routes from lockledger.

The chat app's front end calls ``GET /get_lock_status/<id>`` and
``POST /ensure_locks_cleared/<id>`` on the app itself (and an admin page may call
``POST /force_clear_locks/<id>``). :func:`lock_routes` answers them by calling
lockledger from the server side, with the app's service token, behind the app's own
decorators (login, rate limits); the browser never talks to lockledger::

    from lockledger_client import LockLedger
    from lockledger_client.flask import lock_routes

    ll = LockLedger("http://127.0.0.1:8787", token=os.environ.get("LOCKLEDGER_TOKEN"))
    app.register_blueprint(lock_routes(ll, decorators=[login_required,
                                                        limiter.limit("50 per minute")]))

The answers are lockledger's own (``conversation_id, locks_status, any_locked,
stale_locks, can_cleanup, locks`` for status; ``success, cleared, skipped, message`` for
a clear), so every key the front end reads is there. Errors are JSON with
``success: false`` and a top-level ``message``, never an HTML page; if lockledger cannot
be reached, status says so in ``message`` (with ``any_locked: true`` and
``service_unavailable: true``: nothing is shown as clear while the service that knows is
down). Every ``message`` is safe to insert as HTML (the front end does).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple

import flask
from werkzeug.exceptions import HTTPException

from .client import LockLedger
from .errors import Json, LockLedgerError

__all__ = ["lock_routes", "UNAVAILABLE_MESSAGE"]

View = Callable[..., Any]

#: What the routes say when lockledger cannot be reached.
UNAVAILABLE_MESSAGE = (
    "The lock service (lockledger) is unavailable, so lock status cannot be shown or "
    "cleared right now. Locks still work; try again once the service is back.")

_UNSAFE = re.compile(r"[<>&\"'`]")


def _html_safe(text: str) -> str:
    """Removes what could break out of HTML text or an attribute (the front end inserts
    ``message`` with jQuery ``.html()``)."""
    return _UNSAFE.sub("", text)


def _json(body: Json, status: int = 200) -> flask.Response:
    resp = flask.jsonify(body)
    resp.status_code = status
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _failure(e: LockLedgerError, conversation_id: str, what: str) -> flask.Response:
    """An error as the front end reads it: ``success: false`` and a top-level
    ``message`` (plus lockledger's ``error: {code, message}`` when it answered)."""
    if e.status is None:
        status, code, message = 503, "lock_service_unavailable", UNAVAILABLE_MESSAGE
    else:
        status = e.status
        code = e.code
        answered = e.body.get("message") if isinstance(e.body.get("message"), str) else None
        message = answered or e.message or "lockledger answered HTTP %d" % e.status
        if status >= 500:
            message = "The lock service (lockledger) could not %s: %s" % (what, message)
    message = _html_safe(message)
    body: Json = {
        "success": False,
        "message": message,
        "error": {"code": code, "message": message},
        "conversation_id": conversation_id,
    }
    if what == "show the lock status":
        # The front end renders any_locked as "All locks are clear" when false: never say
        # that while the service that knows cannot be asked.
        body.update({"any_locked": True, "locks_status": {}, "stale_locks": [],
                     "can_cleanup": False, "locks": [],
                     "service_unavailable": e.unavailable})
    else:
        body.update({"cleared": [], "skipped": [], "service_unavailable": e.unavailable})
    return _json(body, status)


def _bad_request(conversation_id: str, message: str, status: int = 400) -> flask.Response:
    message = _html_safe(message)
    return _json({"success": False, "message": message,
                  "error": {"code": "bad_request", "message": message},
                  "conversation_id": conversation_id}, status)


def _safe_answer(body: Json) -> Json:
    msg = body.get("message")
    if isinstance(msg, str):
        body["message"] = _html_safe(msg)
    return body


def _decorate(view: View, decorators: Sequence[Callable[[View], View]]) -> View:
    # Listed as they would be stacked above the function: the first is the outermost.
    for decorator in reversed(list(decorators)):
        view = decorator(view)
    return view


def _posted_json() -> bool:
    """A POST the browser could only send from the app's own page: a JSON content type
    or a custom header (a cross-site form can do neither without CORS)."""
    req = flask.request
    return bool(req.is_json or req.headers.get("X-Requested-With")
                or req.headers.get("X-Lockledger-Client"))


def lock_routes(client: LockLedger, decorators: Iterable[Callable[[View], View]] = (),
                admin_client: Optional[LockLedger] = None, *,
                admin_decorators: Iterable[Callable[[View], View]] = (),
                actor: Optional[Callable[[], Optional[str]]] = None,
                name: str = "lockledger_locks", url_prefix: Optional[str] = None,
                timeout: float = 10.0, require_json: bool = True) -> flask.Blueprint:
    """A blueprint serving ``/get_lock_status/<id>``, ``/ensure_locks_cleared/<id>``
    and ``/force_clear_locks/<id>`` from lockledger.

    Args:
        client: the client the routes use, with the app's service token
            (``token=``). Its admin token, if it has one, is never used here.
        decorators: the app's decorators for every route, as they would be stacked
            above a view (first = outermost), e.g.
            ``[login_required, limiter.limit("50 per minute")]``.
        admin_client: a client with the admin token, for ``/force_clear_locks``. Without
            it that route answers 403 (the chat app's front end never calls it).
        admin_decorators: extra decorators for ``/force_clear_locks`` only (e.g. the
            app's admin check), inside ``decorators``.
        actor: returns who is acting (e.g. the logged-in user's id), recorded by
            lockledger as the actor of clears; default: the client's holder label.
        name, url_prefix: the blueprint's name and prefix.
        timeout: seconds one call to lockledger may take.
        require_json: POSTs must carry a JSON content type or a custom header (CSRF);
            the front end's ``fetch`` sends ``Content-Type: application/json``.
    """
    bp = flask.Blueprint(name, __name__, url_prefix=url_prefix)
    decorators = tuple(decorators)
    admin_decorators = tuple(admin_decorators)

    def who() -> Optional[str]:
        if actor is None:
            return None
        value = actor()
        return str(value) if value else None

    def get_lock_status(conversation_id: str) -> flask.Response:
        try:
            return _json(_safe_answer(client.status(conversation_id, timeout=timeout)))
        except LockLedgerError as e:
            return _failure(e, conversation_id, "show the lock status")

    def ensure_locks_cleared(conversation_id: str) -> flask.Response:
        if require_json and not _posted_json():
            return _bad_request(conversation_id, "Send this request with "
                                "Content-Type: application/json.", 415)
        body = flask.request.get_json(silent=True)
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if tokens is not None and not _valid_tokens(tokens):
            return _bad_request(conversation_id, "tokens must map lock fields to the "
                                "integer tokens shown by the lock status.")
        try:
            out = client.ensure_locks_cleared(conversation_id, tokens or None, actor=who(),
                                              timeout=timeout)
        except LockLedgerError as e:
            return _failure(e, conversation_id, "clear locks")
        return _json(_safe_answer(out))

    def force_clear_locks(conversation_id: str) -> flask.Response:
        if require_json and not _posted_json():
            return _bad_request(conversation_id, "Send this request with "
                                "Content-Type: application/json.", 415)
        if admin_client is None:
            return _bad_request(conversation_id, "Force clear is not enabled in this app: "
                                "it needs lockledger's admin token on the server side.", 403)
        body = flask.request.get_json(silent=True)
        body = body if isinstance(body, dict) else {}
        tokens = body.get("tokens")
        if not tokens or not _valid_tokens(tokens):
            return _bad_request(conversation_id, "A force clear needs the tokens you were "
                                "shown, as tokens: {field: token}, and a reason.")
        reason = body.get("reason")
        acting = who()
        if not isinstance(reason, str) or not reason.strip():
            reason = "force clear from the Lock Status modal" + (
                " by %s" % acting if acting else "")
        try:
            out = admin_client.force_clear(conversation_id, tokens, reason, actor=acting,
                                           timeout=timeout)
        except LockLedgerError as e:
            return _failure(e, conversation_id, "force-clear locks")
        return _json(_safe_answer(out))

    routes: Tuple[Tuple[str, View, str, Sequence[Callable[[View], View]]], ...] = (
        ("/get_lock_status/<conversation_id>", get_lock_status, "GET", ()),
        ("/ensure_locks_cleared/<conversation_id>", ensure_locks_cleared, "POST", ()),
        ("/force_clear_locks/<conversation_id>", force_clear_locks, "POST", admin_decorators),
    )
    for rule, view, method, extra in routes:
        wrapped = _decorate(_decorate(view, extra), decorators)
        bp.add_url_rule(rule, endpoint=view.__name__, view_func=wrapped, methods=[method])

    @bp.errorhandler(Exception)
    def _internal(e: Exception) -> Any:
        if isinstance(e, HTTPException):
            return e  # the app's own answers: 401/302 from login, 429 from the limiter
        flask.current_app.logger.exception("lockledger lock route failed")
        message = "The lock routes failed unexpectedly; see the app log."
        return _json({"success": False, "message": message,
                      "error": {"code": "internal", "message": message}}, 500)

    return bp


def _valid_tokens(tokens: Any) -> bool:
    return isinstance(tokens, dict) and all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in tokens.items())
