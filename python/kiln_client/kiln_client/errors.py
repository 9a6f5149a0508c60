"""The exceptions the client raises.

The server answers every error with ``{"error": {"code": ..., "message": ...}}``. Each documented
``code`` has its own class so that callers can branch on the type (or on ``code``), never on the
message, which is meant for people.
"""

from typing import Optional

import requests


class KilnError(Exception):
    """Any error from Kiln or from reaching it.

    ``code`` is the error's machine-readable code (``None`` when the answer carried none),
    ``message`` the server's explanation, and ``status`` the HTTP status (``None`` when no answer
    came back).
    """

    def __init__(self, message: str, *, code: Optional[str] = None, status: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        return f"{self.status} {self.code or 'error'}: {self.message}"


class KilnConnectionError(KilnError):
    """No answer came back: the connection failed, dropped or timed out, after any retries."""


class InvalidRequest(KilnError):
    """400: the request does not match the API (a bad field, parameter or header)."""


class Unauthorized(KilnError):
    """401: no key, or an unknown or revoked one."""


class Forbidden(KilnError):
    """403: the key's scope does not allow the call (use a key of scope ``user``)."""


class NotFound(KilnError):
    """404: no such resource, or one that belongs to another account."""


class Conflict(KilnError):
    """409: the resource's state does not allow the change, or an idempotency key was reused
    with a different body."""


class PayloadTooLarge(KilnError):
    """413: the upload is larger than the server's limit."""


class InvalidInput(KilnError):
    """422: well formed but refused, e.g. an unknown model or input that fails its schema."""


class RateLimited(KilnError):
    """429: an admission limit was reached. ``retry_after`` is the server's suggested wait in
    seconds (``None`` if it sent none). Raised only once the client's own retries are spent."""

    def __init__(self, message: str, *, code: Optional[str] = None, status: Optional[int] = None,
                 retry_after: Optional[float] = None):
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


#: The class for each documented error code.
ERRORS_BY_CODE = {
    "invalid_request": (400, InvalidRequest),
    "unauthorized": (401, Unauthorized),
    "forbidden": (403, Forbidden),
    "not_found": (404, NotFound),
    "conflict": (409, Conflict),
    "payload_too_large": (413, PayloadTooLarge),
    "invalid_input": (422, InvalidInput),
    "rate_limited": (429, RateLimited),
}

_ERRORS_BY_STATUS = {status: cls for status, cls in ERRORS_BY_CODE.values()}


def retry_after_seconds(response: requests.Response) -> Optional[float]:
    """The ``Retry-After`` header in seconds, or ``None`` when absent or not a number (the API
    sends whole seconds; the HTTP-date form is not used)."""
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def error_from_response(response: requests.Response) -> KilnError:
    """The exception for an error answer: chosen by the body's ``code``, else by the status (an
    answer from a proxy may carry no Kiln body), else the base ``KilnError``."""
    code, message = None, response.reason or f"HTTP {response.status_code}"
    try:
        detail = response.json()["error"]
        code, message = detail["code"], detail["message"]
    except (ValueError, KeyError, TypeError):
        pass
    _, cls = ERRORS_BY_CODE.get(code, (None, _ERRORS_BY_STATUS.get(response.status_code, KilnError)))
    if cls is RateLimited:
        return RateLimited(message, code=code, status=response.status_code, retry_after=retry_after_seconds(response))
    return cls(message, code=code, status=response.status_code)
