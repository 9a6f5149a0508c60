"""Sending declared operations to a Kiln server, with the retries that are safe.

Two kinds of failure are retried, each at most ``max_retries`` times:

- ``429 rate_limited``, after the ``Retry-After`` seconds the server asks for. A 429 means the
  server refused the request and did nothing, so any call may be sent again.
- Connection failures (refused, reset, timed out, dropped mid-answer), after an exponential
  backoff. Here the request may or may not have reached the server. It is sent again only if
  that cannot have an effect twice (``Operation.safe_to_resend``: reads, and calls with an
  ``Idempotency-Key``) or if the connection was never made, so nothing was sent.
"""

import random
import time
from typing import Any, Callable, Dict, IO, Optional
from urllib.parse import quote

import requests
import urllib3

from . import __version__
from .errors import KilnConnectionError, error_from_response, retry_after_seconds
from .operations import Operation
from .types import from_json

#: The first backoff after a connection failure, in seconds; it doubles with each retry.
BACKOFF_SECONDS = 0.5
#: The longest backoff, in seconds.
MAX_BACKOFF_SECONDS = 8.0

#: Failures after which no answer came back.
CONNECTION_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


def backoff(attempt: int) -> float:
    """The wait before retry number ``attempt + 1``: exponential, capped, and jittered so that
    many clients cut off at once do not all come back at once."""
    return min(MAX_BACKOFF_SECONDS, BACKOFF_SECONDS * 2 ** attempt) * random.uniform(0.5, 1.0)


def never_sent(error: Exception) -> bool:
    """Whether a failure happened before the connection was made, so the server cannot have seen
    the request."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


class Transport:
    """One server and one key: builds each request from its ``Operation`` and retries it."""

    def __init__(self, url: str, key: str, *, timeout: float, max_retries: int):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {key}", "User-Agent": f"kiln-client/{__version__}"})

    def close(self) -> None:
        self.session.close()

    def call(
        self,
        operation: Operation,
        *,
        resource_id: Optional[str] = None,
        query: Optional[Dict[str, Any]] = None,
        headers: Optional[Dict[str, str]] = None,
        json: Optional[Dict[str, Any]] = None,
        open_body: Optional[Callable[[], IO[bytes]]] = None,
        content_type: Optional[str] = None,
        stream: bool = False,
        timeout: Optional[float] = None,
        read: Optional[Callable[[requests.Response], Any]] = None,
    ) -> Any:
        """Sends ``operation`` and returns ``read(response)`` for a successful answer (by default
        the ``operation.response`` object read from the JSON body).

        ``open_body`` opens a raw body (of type ``content_type``) afresh for each attempt, so that
        a retry sends it whole.
        ``read`` runs inside the retry loop: a safe-to-resend answer that breaks off while it is
        read (a download) is fetched again. Error answers raise the matching ``KilnError``.
        """
        _check_declared(operation, query or {}, headers or {}, json or {})
        url = self.url + operation.path.format(id=quote(resource_id or "", safe=""))
        query = {name: value for name, value in (query or {}).items() if value is not None}
        headers = dict(headers or {})
        if content_type:
            headers["Content-Type"] = content_type
        attempt = 0
        while True:
            try:
                response = self._send(operation, url, query, headers, json, open_body, stream, timeout)
                if response.status_code == 429 and attempt < self.max_retries:
                    delay = retry_after_seconds(response)
                    response.close()
                    time.sleep(backoff(attempt) if delay is None else delay)
                    attempt += 1
                    continue
                if not response.ok:
                    with response:
                        raise error_from_response(response)
                return read(response) if read else from_json(operation.response, response.json())
            except CONNECTION_ERRORS as error:
                if attempt >= self.max_retries or not (operation.safe_to_resend or never_sent(error)):
                    raise KilnConnectionError(f"{operation.method} {url}: {error}") from error
                time.sleep(backoff(attempt))
                attempt += 1

    def _send(self, operation, url, query, headers, json, open_body, stream, timeout) -> requests.Response:
        body = open_body() if open_body else None
        try:
            return self.session.request(
                operation.method, url, params=query, headers=headers, json=json, data=body, stream=stream,
                timeout=timeout if timeout is not None else self.timeout)
        finally:
            if body is not None:
                body.close()


def _check_declared(operation: Operation, query: dict, headers: dict, json: dict) -> None:
    """Refuses to send a parameter, header or field that ``operation`` does not declare, so that
    the table the contract test checks is the whole truth of what the client sends."""
    for kind, names, declared in (
        ("query parameter", query, operation.query),
        ("header", headers, operation.headers),
        ("body field", json, operation.request_fields),
    ):
        undeclared = set(names) - set(declared)
        if undeclared:
            raise ValueError(f"{operation.operation_id} does not declare the {kind} {sorted(undeclared)}")
