"""Tests of the chat backend alone: it runs as a subprocess on a free port, as Herald would see it.

    cd examples/chat_backend && python3 -m unittest -v
    python3 -m unittest discover -s examples/chat_backend -v    # from the repository root
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "server.py")
SECRET = "test-secret"


def sign(body: bytes, timestamp: int | None = None, secret: str = SECRET) -> dict:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Herald-Timestamp": ts, "X-Herald-Signature": "sha256=" + mac, "X-Herald-Batch": "b-test"}


class BackendProcess:
    """server.py on 127.0.0.1:<free port>; its stdout lines are collected in a queue."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, SERVER, "--port", "0", "--db", ":memory:", "--webhook-secret", SECRET],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = self.proc.stdout.readline()
        m = re.fullmatch(r"listening on (http://127\.0\.0\.1:(\d+))\n", first)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"unexpected first line {first!r}; stderr: {self.proc.stderr.read()}")
        self.url = m.group(1)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, expected: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line == expected:
                return
            seen.append(line)
        raise AssertionError(f"no line {expected!r} on stdout; saw {seen}")

    def drain_lines(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                return out

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


class BackendTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.backend = BackendProcess()

    @classmethod
    def tearDownClass(cls):
        cls.backend.stop()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, headers, body bytes), without raising on 4xx/5xx."""
        req = urllib.request.Request(self.backend.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def hook(self, name: str, payload: dict, headers: dict | None = None) -> dict:
        """POSTs a proxy request as Herald does and returns the decoded 200 answer."""
        h = {"Content-Type": "application/json", **(headers or {})}
        status, resp_headers, body = self.request("POST", f"/centrifugo/{name}", json.dumps(payload).encode(), h)
        self.assertEqual(status, 200, body)
        self.assertEqual(resp_headers.get("Content-Type"), "application/json")
        return json.loads(body)

    @staticmethod
    def base(user: str = "", **fields) -> dict:
        return {"client": "c-1", "transport": "websocket", "protocol": "json", "encoding": "json", "user": user, **fields}

    def publish(self, user: str, channel: str, data) -> dict:
        return self.hook("publish", self.base(user, channel=channel, data=data))

    def webhook(self, body: bytes, headers: dict):
        return self.request("POST", "/herald/webhooks", body, {"Content-Type": "application/json", **headers})

    # --- process and plain endpoints ---

    def test_healthz_and_unknown_paths(self):
        self.assertEqual(self.request("GET", "/healthz")[0], 200)
        self.assertEqual(self.request("GET", "/nope")[0], 404)
        self.assertEqual(self.request("POST", "/centrifugo/nope", b"{}")[0], 404)

    def test_malformed_proxy_body_is_not_200(self):
        # Herald turns a non-200 answer into error 100 for the client.
        self.assertEqual(self.request("POST", "/centrifugo/subscribe", b"not json")[0], 400)
        self.assertEqual(self.request("POST", "/centrifugo/subscribe", b"[1]")[0], 400)

    # --- connect ---

    def connect_req(self, **fields) -> dict:
        req = {"client": "c-1", "transport": "websocket", "protocol": "json", "encoding": "json"}
        req.update(fields)
        return req

    def test_connect_known_user(self):
        answer = self.hook("connect", self.connect_req(name="js", version="5.8.0"), {"Authorization": "Bearer alice:alice-secret"})
        self.assertEqual(
            answer,
            {"result": {"user": "alice", "info": {"name": "Alice"}, "data": {"rooms": ["chat:lobby", "chat:staff"]}}},
        )
        answer = self.hook("connect", self.connect_req(), {"Authorization": "bearer carol:carol-secret"})
        self.assertEqual(answer["result"]["user"], "carol")
        self.assertEqual(answer["result"]["data"], {"rooms": ["chat:lobby"]})

    def test_connect_refused(self):
        refused = {"disconnect": {"code": 4501, "reason": "unauthorized"}}
        for auth in [None, "", "Bearer mallory:x", "Bearer alice:wrong", "Bearer alice", "Basic alice:alice-secret"]:
            with self.subTest(auth=auth):
                headers = {} if auth is None else {"Authorization": auth}
                self.assertEqual(self.hook("connect", self.connect_req(), headers), refused)

    # --- subscribe ---

    def test_subscribe(self):
        allowed = [("alice", "chat:lobby"), ("alice", "chat:staff"), ("bob", "chat:staff"), ("carol", "chat:lobby")]
        for user, channel in allowed:
            with self.subTest(user=user, channel=channel):
                self.assertEqual(self.hook("subscribe", self.base(user, channel=channel)), {"result": {}})
        denied = {"error": {"code": 403, "message": "permission denied"}}
        for user, channel in [("carol", "chat:staff"), ("", "chat:lobby"), ("mallory", "chat:lobby"), ("alice", "chat:nowhere")]:
            with self.subTest(user=user, channel=channel):
                self.assertEqual(self.hook("subscribe", self.base(user, channel=channel, data={"x": 1})), denied)

    # --- publish and rpc history ---

    def test_publish_stores_and_history_returns(self):
        before = int(time.time() * 1000)
        first = self.publish("alice", "chat:staff", {"text": "hi bob"})["result"]["data"]
        second = self.publish("bob", "chat:staff", {"text": "hi alice"})["result"]["data"]
        self.assertEqual(set(first), {"id", "user", "text", "time_ms"})
        self.assertEqual((first["user"], first["text"]), ("alice", "hi bob"))
        self.assertGreater(second["id"], first["id"])
        self.assertGreaterEqual(first["time_ms"], before)

        answer = self.hook("rpc", self.base("bob", method="history", data={"room": "chat:staff", "limit": 50}))
        self.assertEqual(answer, {"result": {"data": {"messages": [first, second]}}})
        # limit keeps the newest, oldest first
        answer = self.hook("rpc", self.base("alice", method="history", data={"room": "chat:staff", "limit": 1}))
        self.assertEqual(answer["result"]["data"]["messages"], [second])

    def test_publish_binary_encoding(self):
        import base64

        b64 = base64.b64encode(json.dumps({"text": "from b64"}).encode()).decode()
        answer = self.hook("publish", self.base("carol", channel="chat:lobby", b64data=b64))
        self.assertEqual(answer["result"]["data"]["text"], "from b64")

    def test_publish_rejected(self):
        cases = [
            ("alice", "chat:lobby", {"text": ""}, 400),
            ("alice", "chat:lobby", {"text": "   "}, 400),
            ("alice", "chat:lobby", {"text": "x" * 1001}, 400),
            ("alice", "chat:lobby", {"nope": 1}, 400),
            ("alice", "chat:lobby", "just a string", 400),
            ("carol", "chat:staff", {"text": "let me in"}, 403),
        ]
        for user, channel, data, code in cases:
            with self.subTest(user=user, data=str(data)[:20]):
                answer = self.publish(user, channel, data)
                self.assertEqual(set(answer), {"error"})
                self.assertEqual(answer["error"]["code"], code)
                self.assertTrue(400 <= answer["error"]["code"] <= 1999)
                self.assertIsInstance(answer["error"]["message"], str)
        # exactly 1000 characters is fine
        self.assertEqual(self.publish("alice", "chat:lobby", {"text": "y" * 1000})["result"]["data"]["text"], "y" * 1000)
        # nothing rejected was stored
        messages = self.hook("rpc", self.base("bob", method="history", data={"room": "chat:staff"}))["result"]["data"]["messages"]
        self.assertNotIn("let me in", [m["text"] for m in messages])

    def test_rpc_errors(self):
        self.assertEqual(
            self.hook("rpc", self.base("alice", method="nope", data={})),
            {"error": {"code": 404, "message": "unknown method"}},
        )
        self.assertEqual(self.hook("rpc", self.base("alice", data={}))["error"]["code"], 404)  # no method
        denied = self.hook("rpc", self.base("carol", method="history", data={"room": "chat:staff"}))
        self.assertEqual(denied, {"error": {"code": 403, "message": "permission denied"}})
        self.assertEqual(self.hook("rpc", self.base("alice", method="history", data={}))["error"]["code"], 400)
        bad_limit = self.hook("rpc", self.base("alice", method="history", data={"room": "chat:lobby", "limit": 0}))
        self.assertEqual(bad_limit["error"]["code"], 400)

    # --- webhooks ---

    def test_webhook_signature_and_dedup(self):
        events = [
            {"id": "e-1", "type": "user_online", "time_ms": 1, "node": "n1", "user": "alice"},
            {"id": "e-2", "type": "channel_occupied", "time_ms": 2, "node": "n1", "channel": "chat:lobby"},
            {"id": "e-3", "type": "user_online", "time_ms": 3, "node": "n1", "user": "bob"},
        ]
        body = json.dumps({"events": events}).encode()
        self.backend.drain_lines()

        # wrong secret, tampered body, stale or future timestamp, missing or malformed headers: 401
        good = sign(body)
        refused = [
            sign(body, secret="other"),
            sign(body, timestamp=int(time.time()) - 301),
            sign(body, timestamp=int(time.time()) + 301),
            {**good, "X-Herald-Signature": good["X-Herald-Signature"].removeprefix("sha256=")},
            {**good, "X-Herald-Signature": "sha1=" + good["X-Herald-Signature"][7:]},
            {**good, "X-Herald-Timestamp": "yesterday"},
            {"X-Herald-Timestamp": good["X-Herald-Timestamp"]},
            {},
        ]
        for headers in refused:
            with self.subTest(headers=headers):
                self.assertEqual(self.webhook(body, headers)[0], 401)
        self.assertEqual(self.webhook(body + b" ", good)[0], 401)
        self.assertEqual(json.loads(self.request("GET", "/online")[2]), [])

        status, _, resp = self.webhook(body, good)
        self.assertEqual((status, resp), (204, b""))
        self.backend.wait_line("user alice online")
        self.backend.wait_line("user bob online")
        self.assertEqual(json.loads(self.request("GET", "/online")[2]), ["alice", "bob"])

        # a retry of the same batch (new signature, same ids) changes nothing and logs nothing
        self.assertEqual(self.webhook(body, sign(body))[0], 204)
        # a batch mixing an old id and a new one applies only the new one
        mixed = json.dumps(
            {
                "events": [
                    events[0],
                    {"id": "e-4", "type": "user_offline", "time_ms": 4, "node": "n1", "user": "alice"},
                ]
            }
        ).encode()
        self.assertEqual(self.webhook(mixed, sign(mixed))[0], 204)
        self.backend.wait_line("user alice offline")
        self.assertEqual(json.loads(self.request("GET", "/online")[2]), ["bob"])
        # the retried events were not logged a second time
        time.sleep(0.2)
        self.assertNotIn("user alice online", self.backend.drain_lines())

        # the other event types are accepted
        others = json.dumps(
            {
                "events": [
                    {"id": "e-5", "type": "disconnect", "time_ms": 5, "node": "n1", "client": "c-9", "user": "bob",
                     "transport": "websocket", "code": 3000, "reason": "connection closed"},
                    {"id": "e-6", "type": "unsubscribe", "time_ms": 6, "node": "n1", "client": "c-9", "user": "bob",
                     "channel": "chat:lobby", "code": 2000, "reason": "server unsubscribe"},
                    {"id": "e-7", "type": "channel_vacated", "time_ms": 7, "node": "n1", "channel": "chat:lobby"},
                    {"id": "e-8", "type": "user_offline", "time_ms": 8, "node": "n1", "user": "bob"},
                    {"id": "e-9", "type": "something_new", "time_ms": 9, "node": "n1"},
                ]
            }
        ).encode()
        self.assertEqual(self.webhook(others, sign(others))[0], 204)
        self.backend.wait_line("user bob offline")
        self.assertEqual(json.loads(self.request("GET", "/online")[2]), [])

    def test_webhook_signed_but_malformed(self):
        for body in [b"not json", b"[]", b'{"events": 1}']:
            with self.subTest(body=body):
                self.assertEqual(self.webhook(body, sign(body))[0], 400)


if __name__ == "__main__":
    unittest.main()
