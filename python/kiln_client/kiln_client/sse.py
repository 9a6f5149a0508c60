"""Reading a server-sent events stream (``text/event-stream``).

Only what the Kiln event stream uses is handled: ``id:``, ``event:`` and ``data:`` fields, ``:``
comments (the server's keep-alives), and lines ended by ``\\n`` or ``\\r\\n``. Other fields (such
as ``retry:``) are ignored, as the format requires of unknown fields.
"""

from dataclasses import dataclass
from typing import Iterable, Iterator, Optional


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event. ``id`` is the last ``id:`` the stream has sent so far (it carries
    over to later events, as the format says), for resuming with ``Last-Event-ID``."""

    id: Optional[str]
    event: str
    data: str


def lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """The text lines of a byte stream that arrives in arbitrary pieces (a line, or a ``\\r\\n``,
    may be split between two pieces)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield (line[:-1] if line.endswith(b"\r") else line).decode("utf-8")


def events(stream_lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """The events of a stream, each dispatched at the blank line that ends it. An event without
    ``data:`` lines is not dispatched, and an unfinished last event (the stream broke) is
    dropped: its ``id:`` must not count as received."""
    last_id: Optional[str] = None
    kind, data = "", []
    for line in stream_lines:
        if not line:
            if data:
                yield ServerSentEvent(id=last_id, event=kind or "message", data="\n".join(data))
            kind, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            kind = value
        elif name == "id" and "\0" not in value:
            last_id = value
