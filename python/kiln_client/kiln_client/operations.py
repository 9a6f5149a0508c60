"""Every API operation the client calls, declared in one table.

Each declaration says what the client sends (method, path, query parameters, headers, body
fields) and what it reads back (the dataclass whose fields it reads). The client sends requests
only through these declarations, and ``tests/test_contract.py`` checks each one against the
OpenAPI document (``Sources/KilnAPI/openapi.yaml``), so that the client and the contract cannot
drift apart unnoticed.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

from .types import (
    DeliveryList, File, Generation, GenerationEvent, GenerationPage, ModelList, SubmissionResults, WebhookSecretList)


@dataclass(frozen=True)
class Operation:
    """One operation as the client uses it.

    - ``operation_id``: its ``operationId`` in the document.
    - ``path``: the path template; its ``{placeholders}`` are the path parameters.
    - ``query``, ``headers``: the parameters the client may send (besides ``Authorization``).
    - ``body``: ``"json"`` (an object of ``request_fields``), ``"binary"`` (raw bytes) or ``None``.
    - ``response``: the dataclass read from a successful answer, or from each event of an event
      stream; ``None`` when the answer is raw bytes.
    - ``response_media``: the media type of the successful answer; ``None`` when it has no body.
    - ``response_schema``: the component schema ``response`` follows, only where the document
      names it in prose rather than as the answer's schema (the ``data:`` of an event stream).
    """

    operation_id: str
    method: str
    path: str
    query: Tuple[str, ...] = ()
    headers: Tuple[str, ...] = ()
    body: Optional[str] = None
    request_fields: Tuple[str, ...] = ()
    response: Optional[type] = None
    response_media: Optional[str] = "application/json"
    response_schema: Optional[str] = None

    @property
    def safe_to_resend(self) -> bool:
        """Whether sending the request twice has the effect of sending it once, so that it may be
        retried even when the first attempt may have reached the server: reads, and calls that
        carry an ``Idempotency-Key``."""
        return self.method == "GET" or "Idempotency-Key" in self.headers


UPLOAD_FILE = Operation("uploadFile", "POST", "/v1/files", body="binary", response=File)

DOWNLOAD_FILE = Operation("downloadFile", "GET", "/v1/files/{id}", response_media="*/*")

DELETE_FILE = Operation("deleteFile", "DELETE", "/v1/files/{id}", response_media=None)

CREATE_GENERATION = Operation(
    "createGeneration", "POST", "/v1/generations",
    headers=("Idempotency-Key",),
    body="json", request_fields=("model", "input", "alias", "version", "callback_url", "callback_events"),
    response=Generation)

CREATE_GENERATIONS = Operation(
    "createGenerations", "POST", "/v1/generations/batch",
    headers=("Idempotency-Key",),
    body="json", request_fields=("generations",),
    response=SubmissionResults)

LIST_GENERATIONS = Operation(
    "listGenerations", "GET", "/v1/generations", query=("state", "limit", "cursor"), response=GenerationPage)

GET_GENERATION = Operation("getGeneration", "GET", "/v1/generations/{id}", response=Generation)

CANCEL_GENERATION = Operation("cancelGeneration", "POST", "/v1/generations/{id}/cancel", response=Generation)

STREAM_GENERATION_EVENTS = Operation(
    "streamGenerationEvents", "GET", "/v1/generations/{id}/events",
    headers=("Last-Event-ID",),
    response=GenerationEvent, response_media="text/event-stream", response_schema="GenerationEventObject")

LIST_MODELS = Operation("listModels", "GET", "/v1/models", response=ModelList)

LIST_GENERATION_DELIVERIES = Operation(
    "listGenerationDeliveries", "GET", "/v1/generations/{id}/deliveries", response=DeliveryList)

LIST_WEBHOOK_SECRETS = Operation("listWebhookSecrets", "GET", "/v1/webhooks/secrets", response=WebhookSecretList)

OPERATIONS = (
    UPLOAD_FILE, DOWNLOAD_FILE, DELETE_FILE, CREATE_GENERATION, CREATE_GENERATIONS, LIST_GENERATIONS, GET_GENERATION, CANCEL_GENERATION,
    STREAM_GENERATION_EVENTS, LIST_MODELS, LIST_GENERATION_DELIVERIES, LIST_WEBHOOK_SECRETS,
)
