"""Retries, error types, downloads and the resumption of event streams, against a stub server
(``stub.py``) that plays the failures a real server gives only by chance."""

import json
import socket

import pytest
import requests
from stub import (
    StubServer, bytes_reply, drop, error_reply, event, event_stream, generation, json_reply, text_reply)

from kiln_client import Conflict, Kiln, KilnConnectionError, KilnError, NotFound, RateLimited
from kiln_client.transport import never_sent


def client(stub: StubServer, **options) -> Kiln:
    return Kiln(stub.url, "key", **{"timeout": 5, "max_retries": 2, **options})


def test_429_is_retried_after_retry_after_with_the_same_idempotency_key():
    with StubServer([
        error_reply(429, "rate_limited", "the tier has 100 queued generations", {"Retry-After": "0"}),
        json_reply(201, generation("gen_1")),
    ]) as stub:
        created = client(stub).generations.create("demo-video", {"prompt": "a red kiln"})
    assert created.id == "gen_1"
    first, second = stub.received
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert json.loads(first.body) == json.loads(second.body) == {"model": "demo-video", "input": {"prompt": "a red kiln"}}


def test_429_raises_rate_limited_once_the_retries_are_spent():
    with StubServer([error_reply(429, "rate_limited", "slow down", {"Retry-After": "0"})] * 2) as stub:
        with pytest.raises(RateLimited) as raised:
            client(stub, max_retries=1).generations.get("gen_1")
    assert (raised.value.status, raised.value.code, raised.value.retry_after) == (429, "rate_limited", 0)
    assert len(stub.received) == 2


def test_create_is_sent_again_after_a_dropped_connection():
    with StubServer([drop(), json_reply(200, generation("gen_1"))]) as stub:
        created = client(stub).generations.create("demo-video", {"prompt": "a red kiln"}, idempotency_key="order-1")
    assert created.id == "gen_1"
    assert [request.headers["Idempotency-Key"] for request in stub.received] == ["order-1", "order-1"]


@pytest.mark.parametrize("call", [
    lambda kiln, tmp_path: kiln.generations.cancel("gen_1"),
    lambda kiln, tmp_path: kiln.files.upload(tmp_path / "clip.mp4"),
], ids=["cancel", "upload"])
def test_a_post_without_idempotency_is_not_sent_again_once_it_may_have_arrived(call, tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"clip")
    with StubServer([drop(), json_reply(200, generation("gen_1", "canceled"))]) as stub:
        with pytest.raises(KilnConnectionError):
            call(client(stub), tmp_path)
    assert len(stub.received) == 1


def test_only_a_connection_never_made_counts_as_never_sent():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(requests.ConnectionError) as refused:
        requests.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert never_sent(refused.value)
    with StubServer([drop()]) as stub:
        with pytest.raises(requests.ConnectionError) as dropped:
            requests.post(stub.url, data=b"clip", timeout=5)
    assert not never_sent(dropped.value)


def test_upload_streams_the_file_with_a_content_type_from_its_extension(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(100))
    stored = {"id": "file_1", "size": 112, "sha256": "0" * 64, "content_type": "video/mp4",
              "created_at": "2025-01-31T12:00:00.000Z"}
    with StubServer([json_reply(201, stored)]) as stub:
        uploaded = client(stub).files.upload(path)
    assert uploaded.id == "file_1"
    (request,) = stub.received
    assert (request.method, request.path, request.headers["Content-Type"]) == ("POST", "/v1/files", "video/mp4")
    assert request.body == path.read_bytes()


def test_download_broken_off_is_fetched_again_and_never_left_partial(tmp_path):
    video = b"\x00\x00\x00\x18ftypisom" + bytes(5000)
    with StubServer([bytes_reply(video, cut_after=100), bytes_reply(video, content_type="video/mp4")]) as stub:
        client(stub).files.download("file_1", tmp_path / "out.mp4")
    assert (tmp_path / "out.mp4").read_bytes() == video
    assert [path.name for path in tmp_path.iterdir()] == ["out.mp4"]


def test_errors_are_typed_by_code_with_the_status_and_message():
    with StubServer([
        error_reply(404, "not_found", "no generation 'gen_0000'"),
        error_reply(409, "conflict", "generation 'gen_1' has ended"),
        text_reply(502, "Bad Gateway"),
    ]) as stub:
        kiln = client(stub)
        with pytest.raises(NotFound) as not_found:
            kiln.generations.get("gen_0000")
        with pytest.raises(Conflict):
            kiln.generations.cancel("gen_1")
        with pytest.raises(KilnError) as bad_gateway:
            kiln.models.list()
    assert (not_found.value.status, not_found.value.code, not_found.value.message) == (
        404, "not_found", "no generation 'gen_0000'")
    assert (bad_gateway.value.status, bad_gateway.value.code) == (502, None)


def test_list_follows_next_cursor_until_the_last_page():
    with StubServer([
        json_reply(200, {"data": [generation("gen_3")], "next_cursor": "c3"}),
        json_reply(200, {"data": [generation("gen_2")], "next_cursor": "c2"}),
        json_reply(200, {"data": [generation("gen_1")]}),
    ]) as stub:
        ids = [listed.id for listed in client(stub).generations.list(state="queued", limit=1)]
    assert ids == ["gen_3", "gen_2", "gen_1"]
    assert [request.path for request in stub.received] == [
        "/v1/generations?state=queued&limit=1",
        "/v1/generations?state=queued&limit=1&cursor=c3",
        "/v1/generations?state=queued&limit=1&cursor=c2",
    ]


def test_wait_resumes_a_dropped_stream_after_the_last_event_received():
    with StubServer([
        event_stream(": keep-alive\n\n", event(1, "queued", "queued"), event(2, "leased", "running"),
                     "id: 3\nevent: progress\n", complete=False),
        event_stream(": keep-alive\n\n", event(3, "progress", "running", 0.5), event(4, "succeeded", "succeeded", 1.0)),
        json_reply(200, generation("gen_1", "succeeded")),
    ]) as stub:
        seen = []
        final = client(stub).generations.wait("gen_1", on_progress=seen.append)
    assert final.state == "succeeded"
    assert [(e.sequence, e.kind, e.progress.fraction) for e in seen] == [
        (1, "queued", 0.0), (2, "leased", 0.0), (3, "progress", 0.5), (4, "succeeded", 1.0)]
    assert "Last-Event-ID" not in stub.received[0].headers
    assert stub.received[1].headers["Last-Event-ID"] == "2"
    assert stub.received[2].path == "/v1/generations/gen_1"


def test_wait_gives_up_after_max_retries_reconnections_without_an_event():
    with StubServer([event_stream(": keep-alive\n\n", complete=False)] * 2) as stub:
        with pytest.raises(KilnConnectionError):
            client(stub, max_retries=1).generations.wait("gen_1")
    assert len(stub.received) == 2


def test_wait_raises_timeout_error_when_its_timeout_runs_out():
    with StubServer([event_stream(event(1, "queued", "queued"), ": keep-alive\n\n", pause=2)]) as stub:
        with pytest.raises(TimeoutError):
            client(stub).generations.wait("gen_1", timeout=0.5)
