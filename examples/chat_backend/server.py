#!/usr/bin/env python3
"""Chat backend for Herald's proxy hooks and webhooks (Python 3.11, standard library only).

Herald calls it over HTTP:

  POST /centrifugo/connect    connect proxy: who is this client? (Authorization: Bearer <user>:<password>)
  POST /centrifugo/subscribe  subscribe proxy: may this user join this room?
  POST /centrifugo/publish    publish proxy: validate a message, store it, return what is broadcast
  POST /centrifugo/rpc        RPC proxy: method "history" reads a room's stored messages
  POST /herald/webhooks       Herald's signed lifecycle webhooks (online/offline, occupied/vacated, ...)
  GET  /healthz               200 when up
  GET  /online                the users Herald reported online, as a JSON list

Run:  python3 server.py --port 8001 --db chat.db --webhook-secret change-me
See README.md.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import hashlib
import hmac
import json
import os
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_TEXT_CHARS = 1000
MAX_BODY_BYTES = 1 << 20
HISTORY_DEFAULT_LIMIT = 50
HISTORY_MAX_LIMIT = 100
WEBHOOK_TOLERANCE_SECONDS = 300
SEEN_EVENT_IDS = 100_000  # how many webhook event ids are remembered for de-duplication
DEFAULT_USERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "users.json")


def log(line: str) -> None:
    """One line on stdout, flushed at once (tests and `tail -f` read it live)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def error(code: int, message: str) -> dict:
    """A proxy `error` answer: the client's command fails with this code (keep it in [400, 1999])."""
    return {"error": {"code": code, "message": message}}


def disconnect(code: int, reason: str) -> dict:
    """A proxy `disconnect` answer: the connection is closed (4000-4499 reconnect, 4500-4999 terminal)."""
    return {"disconnect": {"code": code, "reason": reason}}


class Directory:
    """The known users, their passwords, and who may enter which room (from users.json)."""

    def __init__(self, fixture: dict):
        self.users: dict[str, dict] = fixture["users"]
        # room -> "*" (everyone known) or a list of user names
        self.rooms: dict[str, object] = fixture["rooms"]

    @classmethod
    def load(cls, path: str) -> "Directory":
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f))

    def authenticate(self, authorization: str | None) -> str | None:
        """The user named by `Authorization: Bearer <user>:<password>`, or None."""
        if not authorization:
            return None
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        user, sep, password = credentials.strip().partition(":")
        known = self.users.get(user)
        if not sep or known is None:
            return None
        if not hmac.compare_digest(password.encode(), str(known["password"]).encode()):
            return None
        return user

    def is_member(self, user: str, room: str) -> bool:
        if user not in self.users:
            return False
        members = self.rooms.get(room)
        return members == "*" or (isinstance(members, list) and user in members)

    def rooms_of(self, user: str) -> list[str]:
        return sorted(room for room in self.rooms if self.is_member(user, room))


class Store:
    """Messages in SQLite. One connection shared by the server's threads, behind a lock
    (which also makes `:memory:` work: every thread sees the same database)."""

    def __init__(self, path: str):
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False)
        with self.lock, self.db:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS messages ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " room TEXT NOT NULL, user TEXT NOT NULL, text TEXT NOT NULL, time_ms INTEGER NOT NULL)"
            )
            self.db.execute("CREATE INDEX IF NOT EXISTS messages_room ON messages (room, id)")

    def add(self, room: str, user: str, text: str) -> dict:
        time_ms = now_ms()
        with self.lock, self.db:
            cur = self.db.execute(
                "INSERT INTO messages (room, user, text, time_ms) VALUES (?, ?, ?, ?)",
                (room, user, text, time_ms),
            )
            row_id = cur.lastrowid
        return {"id": row_id, "user": user, "text": text, "time_ms": time_ms}

    def history(self, room: str, limit: int) -> list[dict]:
        """The room's last `limit` messages, oldest first."""
        with self.lock:
            rows = self.db.execute(
                "SELECT id, user, text, time_ms FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?",
                (room, limit),
            ).fetchall()
        return [{"id": i, "user": u, "text": t, "time_ms": ms} for (i, u, t, ms) in reversed(rows)]


class Webhooks:
    """Verifies Herald's webhook batches and applies their events once each."""

    def __init__(self, secret: str, tolerance: int = WEBHOOK_TOLERANCE_SECONDS):
        self.secret = secret.encode()
        self.tolerance = tolerance
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.seen_order: collections.deque[str] = collections.deque()
        self.online: set[str] = set()

    def verify(self, timestamp: str | None, signature: str | None, body: bytes, now: float | None = None) -> bool:
        """`X-Herald-Signature` must be `sha256=` + hex HMAC-SHA256(secret, "<timestamp>.<body>"),
        and `X-Herald-Timestamp` within five minutes of our clock (a replayed old batch is refused)."""
        if not timestamp or not signature:
            return False
        try:
            ts = int(timestamp)
        except ValueError:
            return False
        if abs((time.time() if now is None else now) - ts) > self.tolerance:
            return False
        expected = hmac.new(self.secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        scheme, _, received = signature.strip().partition("=")
        return scheme == "sha256" and hmac.compare_digest(received.lower().encode(), expected.encode())

    def _first_time(self, event_id: str) -> bool:
        if event_id in self.seen:
            return False
        self.seen.add(event_id)
        self.seen_order.append(event_id)
        if len(self.seen_order) > SEEN_EVENT_IDS:
            self.seen.discard(self.seen_order.popleft())
        return True

    def apply(self, events: list) -> int:
        """Applies the events not seen before, in order; returns how many were new."""
        applied = 0
        with self.lock:
            for event in events:
                if not isinstance(event, dict):
                    continue
                event_id = event.get("id")
                # At-least-once delivery: a retried batch repeats its events' ids.
                if event_id is not None and not self._first_time(str(event_id)):
                    continue
                applied += 1
                self._apply_one(event)
        return applied

    def _apply_one(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "user_online":
            self.online.add(event.get("user", ""))
            log(f"user {event.get('user')} online")
        elif kind == "user_offline":
            self.online.discard(event.get("user", ""))
            log(f"user {event.get('user')} offline")
        elif kind in ("channel_occupied", "channel_vacated"):
            log(f"channel {event.get('channel')} {kind.removeprefix('channel_')}")
        elif kind == "disconnect":
            log(
                f"client {event.get('client')} of user {event.get('user')} disconnected"
                f" ({event.get('transport')}, {event.get('code')} {event.get('reason')})"
            )
        elif kind == "unsubscribe":
            log(
                f"client {event.get('client')} of user {event.get('user')} unsubscribed from"
                f" {event.get('channel')} ({event.get('code')} {event.get('reason')})"
            )
        # other types: ignored, so that a newer Herald with more event types is still accepted

    def online_users(self) -> list[str]:
        with self.lock:
            return sorted(self.online)


def client_data(req: dict):
    """The client's payload of a proxy request: `data` (JSON), or `b64data` (binary_encoding) decoded
    and parsed as JSON. Raises ValueError when b64data is not base64-encoded JSON."""
    if "b64data" in req and "data" not in req:
        try:
            return json.loads(base64.b64decode(req["b64data"], validate=True))
        except (binascii.Error, ValueError) as e:
            raise ValueError("data must be JSON") from e
    return req.get("data")


class ChatBackend:
    """The hooks' decisions, independent of HTTP."""

    def __init__(self, directory: Directory, store: Store, webhooks: Webhooks):
        self.directory = directory
        self.store = store
        self.webhooks = webhooks

    def connect(self, req: dict, authorization: str | None) -> dict:
        user = self.directory.authenticate(authorization)
        if user is None:
            return disconnect(4501, "unauthorized")
        return {
            "result": {
                "user": user,
                "info": {"name": self.directory.users[user].get("name", user)},
                "data": {"rooms": self.directory.rooms_of(user)},
            }
        }

    def subscribe(self, req: dict) -> dict:
        if not self.directory.is_member(str(req.get("user", "")), str(req.get("channel", ""))):
            return error(403, "permission denied")
        return {"result": {}}

    def publish(self, req: dict) -> dict:
        user, room = str(req.get("user", "")), str(req.get("channel", ""))
        if not self.directory.is_member(user, room):
            return error(403, "permission denied")
        try:
            data = client_data(req)
        except ValueError:
            return error(400, "data must be JSON")
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str):
            return error(400, 'data must be {"text": "..."}')
        if not text.strip():
            return error(400, "empty message")
        if len(text) > MAX_TEXT_CHARS:
            return error(400, f"message longer than {MAX_TEXT_CHARS} characters")
        # What we answer replaces the client's data: this is what every subscriber receives.
        return {"result": {"data": self.store.add(room, user, text)}}

    def rpc(self, req: dict) -> dict:
        method = req.get("method")
        if method != "history":
            return error(404, "unknown method")
        try:
            data = client_data(req)
        except ValueError:
            return error(400, "data must be JSON")
        data = data if isinstance(data, dict) else {}
        room = data.get("room")
        if not isinstance(room, str) or not room:
            return error(400, "room required")
        limit = data.get("limit", HISTORY_DEFAULT_LIMIT)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            return error(400, "limit must be a positive integer")
        if not self.directory.is_member(str(req.get("user", "")), room):
            return error(403, "permission denied")
        messages = self.store.history(room, min(limit, HISTORY_MAX_LIMIT))
        return {"result": {"data": {"messages": messages}}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Herald reuses its connections to the backend
    server_version = "chat-backend"
    backend: ChatBackend  # set on the subclass made by make_server
    verbose = False

    def log_message(self, format, *args):  # noqa: A002 (BaseHTTPRequestHandler's signature)
        if self.verbose:
            sys.stderr.write("%s %s\n" % (self.address_string(), format % args))

    def send_body(self, status: int, body: bytes = b"", content_type: str = "application/json") -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def send_json(self, value, status: int = 200) -> None:
        self.send_body(status, json.dumps(value, separators=(",", ":")).encode())

    def read_body(self) -> bytes | None:
        """The request body, or None after answering 411/413."""
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.send_body(411, b"Content-Length required\n", "text/plain")
            return None
        if int(length) > MAX_BODY_BYTES:
            self.send_body(413, b"body too large\n", "text/plain")
            self.close_connection = True
            return None
        return self.rfile.read(int(length))

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self.send_body(200, b"ok\n", "text/plain")
        elif path == "/online":
            self.send_json(self.backend.webhooks.online_users())
        else:
            self.send_body(404, b"not found\n", "text/plain")

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        body = self.read_body()
        if body is None:
            return
        if path == "/herald/webhooks":
            self.webhook(body)
            return
        hooks = {
            "/centrifugo/connect": lambda req: self.backend.connect(req, self.headers.get("Authorization")),
            "/centrifugo/subscribe": self.backend.subscribe,
            "/centrifugo/publish": self.backend.publish,
            "/centrifugo/rpc": self.backend.rpc,
        }
        hook = hooks.get(path)
        if hook is None:
            self.send_body(404, b"not found\n", "text/plain")
            return
        try:
            req = json.loads(body)
        except ValueError:
            req = None
        if not isinstance(req, dict):
            # Herald answers the client with error 100 for a non-200 status.
            self.send_body(400, b"body must be a JSON object\n", "text/plain")
            return
        self.send_json(hook(req))

    def webhook(self, body: bytes) -> None:
        webhooks = self.backend.webhooks
        # Verify the raw bytes, before parsing anything.
        if not webhooks.verify(self.headers.get("X-Herald-Timestamp"), self.headers.get("X-Herald-Signature"), body):
            self.send_body(401, b"bad signature\n", "text/plain")
            return
        try:
            batch = json.loads(body)
        except ValueError:
            batch = None
        if not isinstance(batch, dict) or not isinstance(batch.get("events"), list):
            self.send_body(400, b'body must be {"events": [...]}\n', "text/plain")
            return
        webhooks.apply(batch["events"])
        self.send_body(204)


def make_server(host: str, port: int, backend: ChatBackend, verbose: bool = False) -> ThreadingHTTPServer:
    handler = type("ChatHandler", (Handler,), {"backend": backend, "verbose": verbose})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Chat backend for Herald's proxy hooks and webhooks")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8001, help="port to bind; 0 picks a free one (default 8001)")
    p.add_argument("--db", default=":memory:", help="SQLite file for messages (default :memory:)")
    p.add_argument("--users", default=DEFAULT_USERS, help="users and rooms fixture (default users.json here)")
    p.add_argument(
        "--webhook-secret",
        default=os.environ.get("HERALD_WEBHOOK_SECRET"),
        help="webhooks.secret of Herald's config (env HERALD_WEBHOOK_SECRET)",
    )
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = p.parse_args(argv)
    if not args.webhook_secret:
        p.error("--webhook-secret (or HERALD_WEBHOOK_SECRET) is required: Herald's webhooks.secret")

    backend = ChatBackend(Directory.load(args.users), Store(args.db), Webhooks(args.webhook_secret))
    server = make_server(args.host, args.port, backend, args.verbose)
    host, port = server.server_address[:2]
    log(f"listening on http://{host}:{port}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
