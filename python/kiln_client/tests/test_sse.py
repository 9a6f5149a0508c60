"""The event-stream reader on the pieces a network delivers."""

from kiln_client.sse import ServerSentEvent, events, lines


def read(*chunks: bytes):
    return list(events(lines(chunks)))


def test_fields_comments_and_the_blank_line_that_ends_each_event():
    assert read(b": keep-alive\n\nid: 1\nevent: queued\ndata: {}\n\n: keep-alive\n\nid: 2\nevent: leased\ndata: {\"a\":1}\n\n") == [
        ServerSentEvent(id="1", event="queued", data="{}"),
        ServerSentEvent(id="2", event="leased", data='{"a":1}'),
    ]


def test_lines_split_between_chunks_and_crlf_endings():
    assert read(b"id: 7\r", b"\nevent: prog", b"ress\r\ndata: {\"x\"", b":1}\r\n\r", b"\n") == [
        ServerSentEvent(id="7", event="progress", data='{"x":1}')]


def test_several_data_lines_join_and_unknown_fields_are_ignored():
    assert read(b"retry: 100\nfoo: bar\ndata: a\ndata:b\n\n") == [ServerSentEvent(id=None, event="message", data="a\nb")]


def test_the_id_carries_over_to_later_events():
    assert [event.id for event in read(b"id: 3\ndata: x\n\ndata: y\n\n")] == ["3", "3"]


def test_an_unfinished_event_is_not_dispatched():
    assert read(b"id: 1\ndata: x\n\nid: 2\nevent: progress\ndata: {") == [ServerSentEvent(id="1", event="message", data="x")]
