"""The objects the API returns, as dataclasses.

Each field is named exactly as the JSON field it is read from (the API is snake_case), and its
type hint says how it is read: ``Optional`` fields may be absent from the answer (the API leaves
out fields without a value), ``datetime`` fields are RFC 3339 times. The contract test checks these
declarations against the OpenAPI document, so they are the client's whole reading of each object.
Every object keeps the JSON it was built from in ``raw``, for fields this version does not know.
"""

import dataclasses
import typing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Optional, Type, TypeVar

#: States after which a generation never changes again.
FINAL_STATES = frozenset({"succeeded", "failed", "canceled"})

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """How far the model says it is: ``fraction`` from 0 to 1, ``stage`` in its own words."""

    fraction: float
    stage: str
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class QueueInfo:
    """Where a queued generation stands: jobs ahead of it, an estimate of the wait (absent until
    the server has measured throughput) and the latest dispatch its tier promises."""

    position: int
    eta_seconds: Optional[float]
    deadline: datetime
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class Output:
    """One output of a succeeded generation; download it with ``kiln.files.download(file_id, …)``."""

    file_id: str
    content_type: str
    size: int
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class ErrorDetail:
    """Why a generation failed, as its worker or the server reported it; or why an item of a batch
    was refused."""

    code: str
    message: str
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class Generation:
    """One generation. ``queue`` is set only while ``queued``; ``output`` maps output names to
    files once it has ``succeeded``; ``error`` is set when it ``failed``."""

    id: str
    model: str
    version: Optional[str]
    alias: Optional[str]
    state: str
    tier: str
    input: Dict[str, Any]
    progress: Progress
    queue: Optional[QueueInfo]
    output: Dict[str, Output]
    error: Optional[ErrorDetail]
    attempts: int
    created_at: datetime
    started_at: Optional[datetime]
    completed_at: Optional[datetime]
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class SubmissionResult:
    """What became of one item of ``generations.create_many``: ``status`` is what submitting it
    alone would have answered (``201`` queued now, ``200`` queued earlier under the same key, or
    ``400``, ``409``, ``422``, ``429``); ``generation`` is set on ``200`` and ``201``, ``error``
    otherwise, with ``retry_after_seconds`` on ``429``."""

    status: int
    generation: Optional[Generation]
    error: Optional[ErrorDetail]
    retry_after_seconds: Optional[int]
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class SubmissionResults:
    """The answer of ``POST /v1/generations/batch``: one result per item sent, in order."""

    results: List[SubmissionResult]
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class GenerationPage:
    """One page of generations, newest first; ``next_cursor`` is ``None`` on the last page."""

    data: List[Generation]
    next_cursor: Optional[str]
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class GenerationEvent:
    """One event of a generation's stream: ``kind`` is what happened (``queued``, ``leased``,
    ``started``, ``progress``, ``requeued``, ``succeeded``, ``failed``, ``canceled``) and
    ``state`` the generation's state after it."""

    sequence: int
    kind: str
    state: str
    progress: Progress
    message: Optional[str]
    at: datetime
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class File:
    """A stored file: an upload or a generation's output."""

    id: str
    size: int
    sha256: str
    content_type: str
    created_at: datetime
    #: When the server's retention deletes it; ``None`` when the server keeps files until deleted.
    expires_at: Optional[datetime]
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class AliasTarget:
    """A version an alias points at, with its share (``weight``) of new generations."""

    version: str
    weight: int
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class Alias:
    """A named pointer to versions of a model, such as ``production`` or ``canary``."""

    name: str
    targets: List[AliasTarget]
    updated_at: datetime
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class Model:
    """A model the key may use. ``input_schema`` is the JSON Schema a generation's ``input`` must
    satisfy (that of the version ``production`` points at), ``None`` when it has none."""

    name: str
    description: str
    input_schema: Optional[Any]
    aliases: List[Alias]
    created_at: datetime
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class DeliveryAttempt:
    """One try at a webhook delivery: the receiver's ``status``, or the ``error`` when none came."""

    at: datetime
    status: Optional[int]
    error: Optional[str]
    duration_ms: float
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class Delivery:
    """A webhook event on its way to a generation's ``callback_url``: ``state`` is ``pending``
    (tried again at ``next_attempt_at``), ``delivered``, ``gone`` (the receiver answered 410) or
    ``failed`` (the retry schedule ran out)."""

    id: str
    generation_id: str
    type: str
    url: str
    state: str
    created_at: datetime
    next_attempt_at: Optional[datetime]
    attempts: List[DeliveryAttempt]
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class DeliveryList:
    """The answer of ``GET /v1/generations/{id}/deliveries``."""

    data: List[Delivery]
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class WebhookSecret:
    """A secret that signs the account's webhooks; ``expires_at`` is set on one being rotated out."""

    id: str
    secret: str
    created_at: datetime
    expires_at: Optional[datetime]
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class WebhookSecretList:
    """The answer of ``GET /v1/webhooks/secrets``."""

    data: List[WebhookSecret]
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class ModelList:
    """The answer of ``GET /v1/models``."""

    data: List[Model]
    raw: dict = field(repr=False, compare=False)


def wire_fields(cls: type) -> Dict[str, Any]:
    """The JSON fields a dataclass reads, by name, with their resolved type hints (``raw`` is not
    one: it holds the whole object)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "raw"}


def from_json(cls: Type[T], data: dict) -> T:
    """Builds a ``cls`` from a JSON object by its field declarations."""
    values = {}
    for name, hint in wire_fields(cls).items():
        if name in data and data[name] is not None:
            values[name] = _convert(hint, data[name])
        elif _is_optional(hint):
            values[name] = None
        else:
            raise ValueError(f"{cls.__name__}: the answer lacks the field '{name}'")
    return cls(**values, raw=data)


def _is_optional(hint: Any) -> bool:
    return typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)


def _convert(hint: Any, value: Any) -> Any:
    """One JSON value read as ``hint`` says: nested objects, lists, maps, times, numbers."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]: the value is present here
        return _convert(next(arg for arg in args if arg is not type(None)), value)
    if origin is list:
        return [_convert(args[0], item) for item in value]
    if origin is dict:
        return {key: _convert(args[1], item) for key, item in value.items()}
    if dataclasses.is_dataclass(hint):
        return from_json(hint, value)
    if hint is datetime:
        return parse_time(value)
    if hint is float:
        return float(value)
    return value


def parse_time(text: str) -> datetime:
    """An RFC 3339 time such as ``2025-01-31T12:00:00.000Z``, as an aware ``datetime`` (Python
    before 3.11 does not read the ``Z`` suffix itself)."""
    return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
