"""Webhooks: the verifier against the Standard Webhooks test vector, and a real delivery from
``kiln up`` to a receiver on loopback, verified with the account's secret."""

import http.server
import threading
import time

import pytest

from kiln_client import WebhookVerificationError, webhooks

# The test vector of the Standard Webhooks specification.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_sign_matches_the_specification():
    assert webhooks.sign(SECRET, ID, TIMESTAMP, b'{"test": 2432232314}') == SIGNATURE


def test_verify_accepts_a_signed_delivery_and_refuses_anything_else():
    body = b'{"id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "type": "generation.succeeded"}'
    headers = {"Webhook-Id": ID, "Webhook-Timestamp": str(TIMESTAMP),
               "Webhook-Signature": "v1,bm90IGl0 " + webhooks.sign(SECRET, ID, TIMESTAMP, body)}
    assert webhooks.verify([SECRET], headers, body, now=TIMESTAMP + 10)["type"] == "generation.succeeded"
    with pytest.raises(WebhookVerificationError, match="no signature"):
        webhooks.verify("whsec_" + "A" * 44, headers, body, now=TIMESTAMP)
    with pytest.raises(WebhookVerificationError, match="no signature"):
        webhooks.verify(SECRET, headers, body + b" ", now=TIMESTAMP)
    with pytest.raises(WebhookVerificationError, match="from now"):
        webhooks.verify(SECRET, headers, body, now=TIMESTAMP + 3600)
    with pytest.raises(WebhookVerificationError, match="webhook-signature"):
        webhooks.verify(SECRET, {"webhook-id": ID, "webhook-timestamp": str(TIMESTAMP)}, body, now=TIMESTAMP)


class Receiver(http.server.BaseHTTPRequestHandler):
    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append((dict(self.headers.items()), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *arguments):
        pass


def test_a_canceled_generation_is_delivered_signed(kiln):
    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        created = kiln.generations.create("demo-video", {"prompt": "never runs"}, callback_url=url)
        kiln.generations.cancel(created.id)
        deadline = time.monotonic() + 30
        while not Receiver.received and time.monotonic() < deadline:
            time.sleep(0.1)
        assert Receiver.received, "no delivery within 30 s"
        headers, body = Receiver.received[0]
        event = webhooks.verify(kiln.webhooks.secrets(), headers, body)
        assert event["type"] == "generation.canceled"
        assert event["data"]["id"] == created.id and event["data"]["state"] == "canceled"
        deliveries = kiln.generations.deliveries(created.id)
        while deliveries[0].state == "pending" and time.monotonic() < deadline:
            time.sleep(0.1)
            deliveries = kiln.generations.deliveries(created.id)
        assert [(d.id, d.state, [a.status for a in d.attempts]) for d in deliveries] == [(event["id"], "delivered", [204])]
    finally:
        server.shutdown()
