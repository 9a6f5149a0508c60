"""The client against a real Kiln (``kiln up``, one CPU worker, the demo model): every call the
client makes, end to end. Clips are kept tiny so that each takes about a second."""

import uuid

import pytest

from kiln_client import Conflict, Forbidden, InvalidInput, InvalidRequest, Kiln, NotFound, Unauthorized

DEMO_MODEL = "demo-video"
#: The smallest clip worth checking: the fields are the demo model's (see the first test).
TINY = {"num_frames": 8, "width": 64, "height": 64}


def is_mp4(path) -> bool:
    """Whether the file starts with an ISO media ``ftyp`` box, as every MP4 does."""
    return path.read_bytes()[4:8] == b"ftyp"


def test_the_demo_model_takes_the_inputs_these_tests_send(kiln):
    (model,) = [model for model in kiln.models.list() if model.name == DEMO_MODEL]
    assert {"prompt", "video", *TINY} <= set(model.input_schema["properties"])
    assert "production" in [alias.name for alias in model.aliases]


@pytest.fixture(scope="module")
def clip(kiln, tmp_path_factory):
    """A text-to-video clip: the final generation, the events seen while waiting, the MP4."""
    created = kiln.generations.create(DEMO_MODEL, {"prompt": "a red kiln", **TINY})
    events = []
    final = kiln.generations.wait(created.id, on_progress=events.append, timeout=120)
    path = tmp_path_factory.mktemp("clip") / "kiln.mp4"
    kiln.files.download(final.output["video"].file_id, path)
    return final, events, path


def test_text_to_video(clip):
    final, events, path = clip
    assert final.state == "succeeded", final.error
    assert events[0].kind == "queued" and events[-1].kind == "succeeded"
    assert [event.sequence for event in events] == sorted({event.sequence for event in events})
    assert events[-1].progress.fraction == 1.0
    assert is_mp4(path)


def test_modify_video(kiln, clip, tmp_path):
    _, _, source = clip
    uploaded = kiln.files.upload(source)
    assert (uploaded.content_type, uploaded.size) == ("video/mp4", source.stat().st_size)
    created = kiln.generations.create(DEMO_MODEL, {"prompt": "make it snow", "video": uploaded.id})
    events = []
    final = kiln.generations.wait(created.id, on_progress=events.append, timeout=120)
    assert final.state == "succeeded", final.error
    assert events and events[-1].state == "succeeded"
    kiln.files.download(final.output["video"].file_id, tmp_path / "snow.mp4")
    assert is_mp4(tmp_path / "snow.mp4")
    assert uploaded.expires_at is not None and uploaded.expires_at > uploaded.created_at


def test_delete_a_file(kiln, clip):
    _, _, source = clip
    uploaded = kiln.files.upload(source)
    kiln.files.delete(uploaded.id)
    with pytest.raises(NotFound):
        kiln.files.delete(uploaded.id)


def test_list_pages_through_every_generation(kiln):
    created = [kiln.generations.create(DEMO_MODEL, {"prompt": f"page {index}", **TINY}).id for index in range(3)]
    page = kiln.generations.list_page(limit=1)
    assert [generation.id for generation in page.data] == [created[-1]] and page.next_cursor
    listed = [generation.id for generation in kiln.generations.list(limit=1)]
    assert listed[:3] == created[::-1]
    assert len(listed) == len(set(listed))


def test_the_same_idempotency_key_gives_the_same_generation(kiln):
    key = str(uuid.uuid4())
    first = kiln.generations.create(DEMO_MODEL, {"prompt": "once", **TINY}, idempotency_key=key)
    again = kiln.generations.create(DEMO_MODEL, {"prompt": "once", **TINY}, idempotency_key=key)
    assert again.id == first.id
    with pytest.raises(Conflict) as reused:
        kiln.generations.create(DEMO_MODEL, {"prompt": "twice", **TINY}, idempotency_key=key)
    assert (reused.value.status, reused.value.code) == (409, "conflict")


def test_create_many_answers_each_item_in_order_and_retries_safely(kiln):
    key = str(uuid.uuid4())
    items = [
        {"model": DEMO_MODEL, "input": {"prompt": "first of a batch", **TINY}},
        {"model": "no-such-model", "input": {}},
        {"model": DEMO_MODEL, "input": {"prompt": "second of a batch", **TINY}},
    ]
    results = kiln.generations.create_many(items, idempotency_key=key)
    assert [result.status for result in results] == [201, 422, 201]
    assert results[1].generation is None and results[1].error.code == "invalid_input"
    assert results[0].generation.state == "queued" and results[0].generation.input["prompt"] == "first of a batch"
    again = kiln.generations.create_many(items, idempotency_key=key)
    assert [result.status for result in again] == [200, 422, 200]
    assert [result.generation.id for result in again if result.generation] == [
        result.generation.id for result in results if result.generation]


def test_errors_are_typed(kiln, kiln_up):
    with pytest.raises(NotFound) as not_found:
        kiln.generations.get("gen_0000")
    assert (not_found.value.status, not_found.value.code) == (404, "not_found")
    with pytest.raises(InvalidInput) as unknown_model:
        kiln.generations.create("no-such-model", {"prompt": "a red kiln"})
    assert (unknown_model.value.status, unknown_model.value.code) == (422, "invalid_input")
    with pytest.raises(InvalidRequest) as bad_limit:
        kiln.generations.list_page(limit=0)
    assert (bad_limit.value.status, bad_limit.value.code) == (400, "invalid_request")
    with Kiln(kiln_up["url"], "not-a-key") as stranger, pytest.raises(Unauthorized) as unauthorized:
        stranger.models.list()
    assert (unauthorized.value.status, unauthorized.value.code) == (401, "unauthorized")
    with Kiln(kiln_up["url"], kiln_up["admin_key"]) as admin, pytest.raises(Forbidden) as forbidden:
        admin.models.list()
    assert (forbidden.value.status, forbidden.value.code) == (403, "forbidden")


def test_cancel(kiln):
    """Last, because a running clip this long holds the only worker until its next heartbeat."""
    created = kiln.generations.create(DEMO_MODEL, {"prompt": "a long clip", "num_frames": 240, "width": 1280, "height": 720})
    canceled = kiln.generations.cancel(created.id)
    assert canceled.state == "canceled"
    assert kiln.generations.wait(created.id, timeout=30).state == "canceled"
    with pytest.raises(Conflict):
        kiln.generations.cancel(created.id)
