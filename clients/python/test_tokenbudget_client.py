"""Unit tests of tokenbudget_client against a local http.server playing the agent API.

    python3 -m unittest discover -s clients/python
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import unittest
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

import tokenbudget_client as tb

ANSWER = {
    "namespace": "agents", "name": "research", "phase": "Warning",
    "limits": {"tokens": 100000, "cost": "5.00", "currency": "USD"},
    "used": {"tokens": 85000, "cost": "3.25"},
    "remainingTokens": 15000, "remainingCost": "1.75", "percentUsed": 85,
    "burnRate": 12000, "pace": 0.6, "sustainableRate": 7200,
}


class FakeAgentApi(BaseHTTPRequestHandler):
    """Answers ANSWER (with the subject asked about) to `Bearer good*`; the Status of the code
    in `server.fail` otherwise. Records each request's path and Authorization header."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        if self.server.fail:
            code, reason = self.server.fail
            return self.reply(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                     "message": f"{reason} indeed", "reason": reason, "code": code})
        if not (self.headers.get("Authorization") or "").startswith("Bearer good"):
            return self.reply(401, {"kind": "Status", "reason": "Unauthorized", "message": "no", "code": 401})
        body = dict(ANSWER)
        if "?" in self.path:
            from urllib.parse import parse_qs, urlsplit
            query = parse_qs(urlsplit(self.path).query)
            body["subject"] = {"label": query["label"][0], "value": query["subject"][0], "tokens": 1000,
                               "remainingTokens": 0, "exhausted": True, "tracked": True}
        self.reply(200, body)

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAgentApi)
        self.server.seen, self.server.fail = [], None
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        self.token_file = os.path.join(self.dir.name, "token")
        self.write_token("good-1")
        self.now = 1000.0

    def write_token(self, token):
        with open(self.token_file, "w") as f:
            f.write(token + "\n")

    def client(self, **kwargs):
        options = dict(url=f"http://127.0.0.1:{self.server.server_address[1]}/", name="research",
                       namespace="agents", token_file=self.token_file, clock=lambda: self.now)
        options.update(kwargs)
        return tb.Client(**options)

    def test_reads_the_budget_with_the_token_of_the_file(self):
        budget = self.client().budget()
        self.assertEqual(self.server.seen, [("/v1/namespaces/agents/tokenbudgets/research", "Bearer good-1")])
        self.assertEqual(budget.phase, "Warning")
        self.assertFalse(budget.exhausted)
        self.assertEqual(budget.remaining_tokens, 15000)
        self.assertEqual(budget.remaining_cost, Decimal("1.75"))
        self.assertEqual(budget.currency, "USD")
        self.assertAlmostEqual(budget.remaining_fraction, 0.15)
        self.assertEqual((budget.pace, budget.sustainable_rate, budget.burn_rate), (0.6, 7200, 12000))
        self.assertIsNone(budget.subject)
        self.assertFalse(budget.subject_exhausted)

    def test_a_subject_is_asked_form_encoded(self):
        budget = self.client().budget(label="end_user", subject="alice@example.com")
        self.assertEqual(self.server.seen[0][0],
                         "/v1/namespaces/agents/tokenbudgets/research?label=end_user&subject=alice%40example.com")
        self.assertEqual(budget.subject["value"], "alice@example.com")
        self.assertTrue(budget.subject_exhausted)
        with self.assertRaises(ValueError):
            self.client().budget(label="end_user")

    def test_answers_are_kept_a_few_seconds_and_the_token_is_read_again_after(self):
        client = self.client(cache_seconds=5)
        for _ in range(50):
            client.budget()
        client.budget(label="end_user", subject="bob")
        self.assertEqual(len(self.server.seen), 2, "one request per question while cached")
        self.write_token("good-2")  # kubelet rotated it
        self.now += 5
        client.budget()
        self.assertEqual(self.server.seen[-1][1], "Bearer good-2")
        self.assertEqual(len(self.server.seen), 3)

    def test_each_refusal_is_its_own_exception_with_the_status_message(self):
        for code, reason, kind in [(401, "Unauthorized", tb.Unauthorized), (403, "Forbidden", tb.Forbidden),
                                   (404, "NotFound", tb.NotFound), (503, "ServiceUnavailable", tb.Unavailable),
                                   (400, "BadRequest", tb.BudgetError)]:
            self.server.fail = (code, reason)
            with self.assertRaises(kind) as raised:
                self.client().budget()
            self.assertEqual((raised.exception.code, raised.exception.reason), (code, reason))
            self.assertIn(f"{reason} indeed", str(raised.exception))
        self.server.fail = None
        self.write_token("bad")
        with self.assertRaises(tb.Unauthorized):
            self.client().budget()

    def test_refusals_are_not_cached(self):
        client = self.client()
        self.server.fail = (503, "ServiceUnavailable")
        with self.assertRaises(tb.Unavailable):
            client.budget()
        self.server.fail = None
        self.assertEqual(client.budget().remaining_tokens, 15000)

    def test_no_server_is_unavailable(self):
        port = self.server.server_address[1]
        self.server.shutdown()
        self.server.server_close()
        with self.assertRaises(tb.Unavailable):
            self.client(url=f"http://127.0.0.1:{port}", timeout=1).budget()

    def test_configuration_comes_from_the_environment_or_fails_clearly(self):
        env = {"TOKENBUDGET_URL": "http://127.0.0.1:1", "TOKENBUDGET_NAME": "b",
               "TOKENBUDGET_NAMESPACE": "ns", "TOKENBUDGET_TOKEN_FILE": "/nonexistent/token"}
        with mock.patch.dict(os.environ, env, clear=True):
            client = tb.Client()
            self.assertEqual((client.url, client.name, client.namespace, client.token_file),
                             ("http://127.0.0.1:1", "b", "ns", "/nonexistent/token"))
            with self.assertRaises(tb.ConfigurationError) as raised:
                client.budget()
            self.assertIn("/nonexistent/token", str(raised.exception))
        with mock.patch.dict(os.environ, {}, clear=True):
            with self.assertRaises(tb.ConfigurationError):
                tb.Client()
            with self.assertRaises(tb.ConfigurationError):
                tb.Client(url="http://x", namespace="ns").budget()


if __name__ == "__main__":
    unittest.main()
