"""A miniature of the chat app, for the end-to-end tests.

What it keeps of the real app (see the README, "Integrating the chat app"): a
conversation's folder is ``<storage>/conversations/<id>/`` and its locks directory is two
levels above it, ``<storage>/locks/``; every field write is a read-modify-write under
``FileLock(f"{location}.lock")`` (the drop-in, imported the way the migration says); a
streaming reply holds ``messages`` and ``message_operations`` while it streams; the
three lock routes come from the blueprint, behind the app's ``@login_required`` and a
rate limit; ``/force_clear_locks`` also behind an admin check.

Run as a worker process (one more app process sharing the storage, as gunicorn would):

    python mini_chat_app.py STORAGE        # prints {"port": N}, serves until killed
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import flask

import lockledger_client
from lockledger_client import FileLock, LockLedger
from lockledger_client.flask import lock_routes

LOCK_KEYS = ["", "all", "message_operations", "memory", "messages",
             "uploaded_documents_list", "artefacts"]

View = Callable[..., Any]


class Conversation:
    def __init__(self, storage: str, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        self.folder = os.path.join(storage, "conversations", conversation_id)
        os.makedirs(self.folder, exist_ok=True)
        # As in the real app: the locks directory is two levels above the folder.
        self.locks_dir = os.path.join(os.path.dirname(os.path.dirname(self.folder)), "locks")
        os.makedirs(self.locks_dir, exist_ok=True)

    def lock_location(self, key: str) -> str:
        return os.path.join(self.locks_dir, f"{self.conversation_id}_{key}")

    def _field_path(self, key: str) -> str:
        return os.path.join(self.folder, f"{key or 'main'}.json")

    def _read(self, key: str) -> Any:
        try:
            with open(self._field_path(key)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def _write(self, key: str, value: Any) -> None:
        tmp = self._field_path(key) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(value, f)
        os.replace(tmp, self._field_path(key))

    def get_field(self, key: str) -> Any:
        lock = FileLock(f"{self.lock_location(key)}.lock")
        with lock:
            return self._read(key)

    def set_field(self, key: str, value: Any, overwrite: bool = False) -> None:
        lock = FileLock(f"{self.lock_location(key)}.lock")
        with lock:
            old = self._read(key)
            if not overwrite and isinstance(old, list):
                value = old + (value if isinstance(value, list) else [value])
            self._write(key, value)

    def stream_reply(self, text: str, chunks: int, delay: float) -> Iterator[str]:
        """The streaming reply: holds messages and message_operations while it streams,
        and saves the reply under them at the end."""
        with FileLock(f"{self.lock_location('message_operations')}.lock"), \
                FileLock(f"{self.lock_location('messages')}.lock"):
            reply: List[str] = []
            for i in range(chunks):
                piece = "chunk %d of a reply to %s\n" % (i, text)
                reply.append(piece)
                yield piece
                time.sleep(delay)
            messages = self._read("messages") or []
            self._write("messages", messages + [{"user": text, "reply": "".join(reply)}])


def login_required(view: View) -> View:
    """The app's @login_required (a stand-in: a session set by /login)."""
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not flask.session.get("email"):
            return flask.redirect("/login")
        return view(*args, **kwargs)
    return wrapper


def admin_required(view: View) -> View:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not flask.session.get("admin"):
            return flask.jsonify(success=False, message="admins only"), 403
        return view(*args, **kwargs)
    return wrapper


class Limiter:
    """A stand-in for flask_limiter's ``limiter.limit("50 per minute")``."""

    def __init__(self) -> None:
        self.calls: Dict[str, int] = {}

    def limit(self, spec: str) -> Callable[[View], View]:
        most = int(spec.split()[0])

        def decorator(view: View) -> View:
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                n = self.calls[view.__name__] = self.calls.get(view.__name__, 0) + 1
                if n > most:
                    return flask.jsonify(success=False, message="too many requests"), 429
                return view(*args, **kwargs)
            return wrapper
        return decorator


def create_app(storage: str, client: LockLedger,
               admin_client: Optional[LockLedger] = None) -> flask.Flask:
    app = flask.Flask(__name__)
    app.secret_key = "mini-chat-app-test-secret"
    app.config["STORAGE"] = storage
    limiter = Limiter()
    app.extensions["limiter"] = limiter
    # The whole integration: one configure() (or LOCKLEDGER_URL) for the drop-in, and
    # the blueprint for the three routes.
    lockledger_client.configure(client=client, locks_dir=os.path.join(storage, "locks"))
    app.register_blueprint(lock_routes(
        client, decorators=[login_required, limiter.limit("50 per minute")],
        admin_client=admin_client, admin_decorators=[admin_required],
        actor=lambda: flask.session.get("email")))

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        if flask.request.method == "GET":
            return "log in", 200
        body = flask.request.get_json(silent=True) or {}
        flask.session["email"] = body.get("email", "user@example.com")
        flask.session["admin"] = bool(body.get("admin"))
        return flask.jsonify(ok=True)

    @app.route("/set_field/<conversation_id>/<key>", methods=["POST"])
    @login_required
    def set_field(conversation_id: str, key: str) -> Any:
        conv = Conversation(storage, conversation_id)
        conv.set_field(key, (flask.request.get_json(silent=True) or {}).get("value"))
        return flask.jsonify(ok=True, value=conv.get_field(key))

    @app.route("/send_message/<conversation_id>", methods=["POST"])
    @login_required
    def send_message(conversation_id: str) -> Any:
        body = flask.request.get_json(silent=True) or {}
        conv = Conversation(storage, conversation_id)
        stream = conv.stream_reply(str(body.get("text", "hello")), int(body.get("chunks", 3)),
                                   float(body.get("delay", 0.0)))
        return flask.Response(flask.stream_with_context(stream), mimetype="text/plain")

    return app


def main() -> int:
    from werkzeug.serving import make_server

    storage = sys.argv[1]
    client = LockLedger(os.environ["LOCKLEDGER_URL"], holder="chat-app", timeout=10)
    server = make_server("127.0.0.1", 0, create_app(storage, client), threaded=True)
    print(json.dumps({"port": server.server_port, "pid": os.getpid()}), flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
