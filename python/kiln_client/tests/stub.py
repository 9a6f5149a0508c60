"""A stub HTTP server for unit tests: it answers each request with the next scripted reply and
records what it received. It is not Kiln; it only plays the answers a test needs (a 429, a
dropped connection, an event stream that breaks) that a real server gives only by chance."""

import http.server
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List


@dataclass
class Received:
    method: str
    path: str
    headers: Dict[str, str]
    body: bytes


Reply = Callable[[http.server.BaseHTTPRequestHandler], None]


class StubServer:
    """Serves ``replies`` in order, one per request, on ``url``; ``received`` lists the requests."""

    def __init__(self, replies: List[Reply]):
        self.replies = list(replies)
        self.received: List[Received] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive and chunked answers, as Kiln

            def handle_one_request(self):
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline or not self.parse_request():
                    self.close_connection = True
                    return
                length = int(self.headers.get("Content-Length", 0))
                stub.received.append(Received(self.command, self.path, dict(self.headers), self.rfile.read(length)))
                stub.replies.pop(0)(self)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a client that hung up early is expected
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def __enter__(self) -> "StubServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()


def json_reply(status: int, body: dict, headers: Dict[str, str] = None) -> Reply:
    def reply(handler):
        data = json.dumps(body).encode()
        handler.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    return reply


def bytes_reply(data: bytes, *, content_type: str = "application/octet-stream", cut_after: int = None) -> Reply:
    """The bytes with their full ``Content-Length``; with ``cut_after``, only that many are sent
    before the connection is closed."""
    def reply(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data if cut_after is None else data[:cut_after])
        if cut_after is not None:
            _drop(handler)
    return reply


def error_reply(status: int, code: str, message: str, headers: Dict[str, str] = None) -> Reply:
    return json_reply(status, {"error": {"code": code, "message": message}}, headers)


def text_reply(status: int, text: str) -> Reply:
    def reply(handler):
        data = text.encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    return reply


def drop() -> Reply:
    """Reads the request, then closes the connection without an answer: the client cannot know
    whether the server acted on it."""
    return _drop


def event_stream(*pieces: str, complete: bool = True, pause: float = 0.0) -> Reply:
    """A chunked ``text/event-stream`` answer sent piece by piece (``pause`` seconds apart); if
    not ``complete``, the connection is closed without the final chunk, as when it drops."""
    def reply(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for piece in pieces:
            data = piece.encode()
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            handler.wfile.flush()
            time.sleep(pause)
        if complete:
            handler.wfile.write(b"0\r\n\r\n")
        else:
            _drop(handler)
    return reply


def _drop(handler) -> None:
    handler.wfile.flush()
    handler.connection.shutdown(socket.SHUT_RDWR)
    handler.close_connection = True


def generation(id: str = "gen_1", state: str = "queued", **fields) -> dict:
    """A generation as the API renders it (its required fields)."""
    return {
        "id": id, "model": "demo-video", "state": state, "tier": "api", "input": {"prompt": "a red kiln"},
        "progress": {"fraction": 1.0 if state == "succeeded" else 0.0, "stage": ""}, "output": {}, "attempts": 0,
        "created_at": "2025-01-31T12:00:00.000Z", **fields,
    }


def event(sequence: int, kind: str, state: str, fraction: float = 0.0) -> str:
    """One event of a generation's stream, as the server writes it."""
    data = {"at": "2025-01-31T12:00:00.000Z", "kind": kind, "progress": {"fraction": fraction, "stage": "drawing"},
            "sequence": sequence, "state": state}
    return f"id: {sequence}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"
