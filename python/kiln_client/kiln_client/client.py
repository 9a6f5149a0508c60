"""The client: ``Kiln(url, key)`` and its ``generations``, ``files`` and ``models``."""

import json
import mimetypes
import os
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

import requests

from . import operations as ops
from . import sse
from .errors import KilnConnectionError
from .transport import CONNECTION_ERRORS, Transport, backoff
from .types import (
    FINAL_STATES, Delivery, File, Generation, GenerationEvent, GenerationPage, Model, SubmissionResult, WebhookSecret, from_json)

#: A file system path.
Path = Union[str, os.PathLike]


class Kiln:
    """A client of one Kiln server, with a key of scope ``user``.

    ``timeout`` is how long, in seconds, to wait for the connection and then for each read
    (an event stream stays open longer: see ``generations.wait``). ``max_retries`` bounds the
    retries of each call after a ``429`` or a connection failure; which calls are retried after a
    connection failure is said on each method.

    Use it as a context manager, or call ``close()``, to release its connections.
    """

    def __init__(self, url: str, key: str, *, timeout: float = 30.0, max_retries: int = 3):
        self._transport = Transport(url, key, timeout=timeout, max_retries=max_retries)
        self.generations = Generations(self._transport)
        self.files = Files(self._transport)
        self.models = Models(self._transport)
        self.webhooks = Webhooks(self._transport)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> "Kiln":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class Generations:
    """Submitting, reading, listing, canceling and waiting for generations."""

    def __init__(self, transport: Transport):
        self._transport = transport

    def create(
        self,
        model: str,
        input: Dict[str, Any],
        *,
        alias: Optional[str] = None,
        version: Optional[str] = None,
        callback_url: Optional[str] = None,
        callback_events: Optional[List[str]] = None,
        idempotency_key: Optional[str] = None,
    ) -> Generation:
        """Queues a generation of ``model`` for ``input`` and returns it (``queued``).

        Give at most one of ``version`` (an exact version) and ``alias`` (default
        ``production``). Input files are given by the id ``files.upload`` returns.

        Always sent with an ``Idempotency-Key`` (a new UUID unless you give one), so it is
        retried after connection failures as well as after ``429``: a retry of the same request
        returns the generation the first one created, and never queues a second. To retry it
        yourself after a ``KilnConnectionError``, pass the same ``idempotency_key`` and the same
        arguments; with other arguments the server answers ``Conflict``.
        """
        body = {
            "model": model, "input": input, "alias": alias, "version": version, "callback_url": callback_url,
            "callback_events": callback_events}
        return self._transport.call(
            ops.CREATE_GENERATION,
            headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())},
            json={name: value for name, value in body.items() if value is not None})

    def create_many(self, items: List[Dict[str, Any]], *, idempotency_key: Optional[str] = None) -> List[SubmissionResult]:
        """Queues up to 100 generations in one request and one commit, and returns what became of
        each, in order (see ``SubmissionResult``). Each item is the keyword arguments of ``create``
        as a dict (``{"model": ..., "input": {...}, "alias": ...}``), and is admitted or refused on
        its own as ``create`` would be: a refused item (unknown model, input that fails the
        schema, an admission limit) has its ``error`` and ``status``, and the others still go.

        Always sent with an ``Idempotency-Key`` (a new UUID unless you give one): the server keys
        item ``i`` as ``<key>/<i>``, so a retry of the same batch (automatic after a connection
        failure, or yours with the same ``idempotency_key`` and items) returns what the first
        created and queues only the items it had refused.
        """
        return self._transport.call(
            ops.CREATE_GENERATIONS,
            headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())},
            json={"generations": [{name: value for name, value in item.items() if value is not None} for item in items]},
        ).results

    def get(self, id: str) -> Generation:
        """The generation ``id`` as it is now. A read: retried after connection failures."""
        return self._transport.call(ops.GET_GENERATION, resource_id=id)

    def deliveries(self, id: str) -> List[Delivery]:
        """The webhook deliveries of generation ``id``, oldest first, with their attempts."""
        return self._transport.call(ops.LIST_GENERATION_DELIVERIES, resource_id=id).data

    def list_page(self, state: Optional[str] = None, limit: Optional[int] = None,
                  cursor: Optional[str] = None) -> GenerationPage:
        """One page of the account's generations, newest first: at most ``limit`` (1–100, the
        server's default 20), only those in ``state`` if given. Pass a page's ``next_cursor`` as
        ``cursor``, with the same filters, for the next (older) page. A read: retried after
        connection failures."""
        return self._transport.call(
            ops.LIST_GENERATIONS, query={"state": state, "limit": limit, "cursor": cursor})

    def list(self, state: Optional[str] = None, limit: Optional[int] = None) -> Iterator[Generation]:
        """Every generation of the account (only those in ``state`` if given), newest first,
        fetched a page of ``limit`` at a time as the iteration goes."""
        cursor = None
        while True:
            page = self.list_page(state=state, limit=limit, cursor=cursor)
            yield from page.data
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def cancel(self, id: str) -> Generation:
        """Cancels a ``queued`` or ``running`` generation and returns it, now ``canceled``. One
        that has already ended raises ``Conflict``.

        Not retried after a connection failure once the request may have reached the server:
        a retry of a cancel that worked would answer ``Conflict`` and hide that it worked.
        Calling it again yourself is harmless; or ``get`` the generation to see its state.
        """
        return self._transport.call(ops.CANCEL_GENERATION, resource_id=id)

    def wait(self, id: str, on_progress: Optional[Callable[[GenerationEvent], None]] = None,
             timeout: Optional[float] = None) -> Generation:
        """Follows the generation's event stream until it ends, and returns the final generation
        (``succeeded``, ``failed`` or ``canceled``; a failure is not raised, read its ``error``).

        ``on_progress`` is called with each ``GenerationEvent`` as it arrives, from the first
        one (``queued``) to the final one; ``event.progress.fraction`` and ``.stage`` say how far
        the model is. If the stream drops, it is resumed where it left off (``Last-Event-ID``),
        so no event is seen twice or missed; ``max_retries`` bounds the reconnections in a row
        that bring no new event. ``timeout`` bounds the whole wait in seconds (default: none)
        and raises ``TimeoutError`` when it runs out; the generation carries on regardless.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last_event_id: Optional[str] = None
        failures = 0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"generation {id} did not end within {timeout} seconds")
            ended = False
            try:
                for event_id, event in self._events(id, last_event_id, remaining):
                    last_event_id, failures = event_id, 0
                    if on_progress:
                        on_progress(event)
                    if event.state in FINAL_STATES:
                        ended = True
                        break
            except CONNECTION_ERRORS as error:
                cause: Exception = error
            else:
                if ended:
                    return self.get(id)
                cause = KilnConnectionError("the event stream ended before the generation did")
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                continue  # reported as a timeout at the top of the loop
            if failures >= self._transport.max_retries:
                raise KilnConnectionError(f"lost the event stream of {id}: {cause}") from cause
            time.sleep(backoff(failures) if deadline is None else min(backoff(failures), deadline - now))
            failures += 1

    def _events(self, id: str, last_event_id: Optional[str], remaining: Optional[float]):
        """The ``(id, GenerationEvent)`` pairs of one connection to the event stream, after
        ``last_event_id``. A read times out after the client's timeout (the server sends a
        keep-alive at least every 15 seconds), or sooner when the wait's deadline comes first."""
        read_timeout = self._transport.timeout if remaining is None else min(self._transport.timeout, remaining)
        response = self._transport.call(
            ops.STREAM_GENERATION_EVENTS, resource_id=id,
            headers={"Last-Event-ID": last_event_id} if last_event_id else None,
            stream=True, timeout=read_timeout, read=lambda response: response)
        with response:
            for event in sse.events(sse.lines(response.iter_content(chunk_size=None))):
                yield event.id, from_json(GenerationEvent, json.loads(event.data))


class Files:
    """Uploading input media and downloading files (inputs and outputs)."""

    def __init__(self, transport: Transport):
        self._transport = transport

    def upload(self, path: Path, content_type: Optional[str] = None) -> File:
        """Uploads the file at ``path``, streamed from disk, and returns it; use its ``id`` in a
        generation's ``input``. ``content_type`` is recorded with the file; by default it is
        guessed from the extension (``video/mp4`` for ``.mp4``).

        Retried after ``429``, but not after a connection failure once the bytes may have
        reached the server: a second upload would store a second file. Uploading again yourself
        is safe; the first copy, if stored, is simply unused.
        """
        content_type = content_type or mimetypes.guess_type(os.fspath(path))[0] or "application/octet-stream"
        return self._transport.call(
            ops.UPLOAD_FILE, open_body=lambda: open(path, "rb"), content_type=content_type)

    def download(self, file_id: str, path: Path) -> None:
        """Downloads the file ``file_id`` to ``path``, streaming it to disk. The bytes go to
        ``path`` + ``.part`` first and are renamed into place only when complete, so ``path``
        never holds a partial file. A read: retried, from the start, after connection failures."""
        partial = os.fspath(path) + ".part"

        def save(response: requests.Response) -> None:
            with response, open(partial, "wb") as out:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    out.write(chunk)
                _check_complete(response)
            os.replace(partial, path)

        try:
            self._transport.call(ops.DOWNLOAD_FILE, resource_id=file_id, stream=True, read=save)
        finally:
            if os.path.exists(partial):
                os.remove(partial)


    def delete(self, file_id: str) -> None:
        """Deletes the file ``file_id`` (an upload or an output) for good. Raises ``Conflict``
        while a queued or running generation needs it, ``NotFound`` when there is no such file."""
        self._transport.call(ops.DELETE_FILE, resource_id=file_id, read=lambda response: response.close())


def _check_complete(response: requests.Response) -> None:
    """Raises a connection error if the answer ended before its ``Content-Length``: urllib3
    before 2.0 does not check it, and would pass a cut-off download as complete."""
    expected = response.headers.get("Content-Length")
    if expected is not None and response.raw.tell() != int(expected):
        raise requests.ConnectionError(f"the answer ended after {response.raw.tell()} of {expected} bytes")


class Models:
    """The models the key may use."""

    def __init__(self, transport: Transport):
        self._transport = transport

    def list(self) -> List[Model]:
        """Every model, with its aliases and input schema. A read: retried after connection
        failures."""
        return self._transport.call(ops.LIST_MODELS).data


class Webhooks:
    """The secrets that sign the account's webhooks; verify deliveries with
    ``kiln_client.webhooks.verify``."""

    def __init__(self, transport: Transport):
        self._transport = transport

    def secrets(self) -> List[WebhookSecret]:
        """The secrets valid now (two during a rotation), oldest first; the server makes one for
        an account that has none. A read: retried after connection failures."""
        return self._transport.call(ops.LIST_WEBHOOK_SECRETS).data
