"""Verifying the webhooks Kiln sends (the Standard Webhooks scheme), in a receiver:

    from kiln_client import webhooks

    event = webhooks.verify(secrets, request.headers, request.body)   # raises WebhookVerificationError
    if event["type"] == "generation.succeeded":
        ...

``secrets`` are the account's secrets (``kiln.webhooks.secrets()``, or one ``whsec_…`` string).
Each delivery is retried under the same ``webhook-id`` until it is acknowledged with a ``2xx``:
remember the ids you handled and ignore repeats.
"""

import base64
import hashlib
import hmac
import json
import time
from typing import Any, Dict, Iterable, Mapping, Optional, Union


class WebhookVerificationError(Exception):
    """The request is not a delivery signed with one of the secrets, or it is too old."""


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,…`` signature of ``body`` with ``secret``, as the server computes it."""
    if not secret.startswith("whsec_"):
        raise ValueError("a webhook secret starts with 'whsec_'")
    key = base64.b64decode(secret[len("whsec_"):])
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def verify(
    secrets: Union[str, Iterable[Any]], headers: Mapping[str, str], body: bytes, *, tolerance: float = 300,
    now: Optional[float] = None,
) -> Dict[str, Any]:
    """Checks a delivery and returns its event (``{"id", "type", "timestamp", "data"}``).

    ``secrets``: a ``whsec_…`` string, or several (strings or the ``WebhookSecret`` objects of
    ``kiln.webhooks.secrets()``): during a rotation a delivery is signed with each. ``headers``:
    the request's headers (any mapping; names are matched without regard to case). ``body``: the
    raw bytes, before any JSON parsing. A ``webhook-timestamp`` more than ``tolerance`` seconds
    from ``now`` is refused, so that a recorded delivery cannot be replayed later.
    """
    lower = {name.lower(): value for name, value in headers.items()}
    try:
        webhook_id, timestamp, signatures = lower["webhook-id"], lower["webhook-timestamp"], lower["webhook-signature"]
    except KeyError as missing:
        raise WebhookVerificationError(f"the request has no {missing.args[0]} header") from None
    try:
        sent = int(timestamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp is not a number: {timestamp!r}") from None
    if abs((time.time() if now is None else now) - sent) > tolerance:
        raise WebhookVerificationError(f"webhook-timestamp {sent} is more than {tolerance:.0f} s from now")
    if isinstance(secrets, str):
        secrets = [secrets]
    offered = set(signatures.split())
    for secret in secrets:
        expected = sign(getattr(secret, "secret", secret), webhook_id, sent, body)
        if any(hmac.compare_digest(expected, signature) for signature in offered):
            event = json.loads(body)
            if event.get("id") != webhook_id:
                raise WebhookVerificationError("the body's id is not the webhook-id")
            return event
    raise WebhookVerificationError("no signature matches any of the secrets")
