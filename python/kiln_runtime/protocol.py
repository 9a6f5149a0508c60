"""The runtime's two protocols: the JSON-lines one with the worker (typed commands in, typed
events out; the worker's side is `RuntimeProtocol.swift`), and what a running prediction can ask
of the runtime (`output_path`, `Canceled`)."""

import dataclasses
import json
import pathlib
import threading


# -- Commands: the worker to the runtime, one JSON line each.


@dataclasses.dataclass(frozen=True)
class Setup:
    """Load the model; answered by Ready or SetupFailed."""


@dataclasses.dataclass(frozen=True)
class Predict:
    """Run one job: its input, its input files by name, the folder for its outputs."""

    id: str
    inputs: dict
    files: dict
    output_dir: str


@dataclasses.dataclass(frozen=True)
class Cancel:
    """Stop the job `id`: its progress() raises Canceled."""

    id: str


@dataclasses.dataclass(frozen=True)
class Shutdown:
    """Exit once the current job, if any, is over."""


def parse_command(line):
    """The command a JSON line holds.

    Raises ValueError naming what is wrong with a line that is not a command.
    """
    try:
        command = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error}") from None
    if not isinstance(command, dict):
        raise ValueError("a command is a JSON object")
    op = command.get("op")
    try:
        if op == "setup":
            return Setup()
        if op == "predict":
            return Predict(
                id=str(command["id"]),
                inputs=dict(command.get("inputs") or {}),
                files={str(k): str(v) for k, v in (command.get("files") or {}).items()},
                output_dir=str(command["output_dir"]),
            )
        if op == "cancel":
            return Cancel(id=str(command["id"]))
        if op == "shutdown":
            return Shutdown()
    except KeyError as missing:
        raise ValueError(f"{op}: missing field {missing}") from None
    raise ValueError(f"unknown op {op!r}")


# -- Events: the runtime to the worker, one JSON line each.


def ready():
    return {"event": "ready"}


def setup_failed(message):
    return {"event": "setup_failed", "message": str(message)[:2000]}


def progress(job_id, fraction, stage):
    return {"event": "progress", "id": job_id, "fraction": fraction, "stage": str(stage)}


def done(job_id, outputs):
    return {"event": "done", "id": job_id, "outputs": outputs}


def canceled(job_id):
    return {"event": "canceled", "id": job_id}


def error(job_id, code, message):
    return {"event": "error", "id": job_id, "code": str(code), "message": str(message)[:2000]}


def line(event):
    """An event as its JSON line (without the newline)."""
    return json.dumps(event, separators=(",", ":"))


# -- What a running prediction can ask of the runtime.


class Canceled(Exception):
    """Raised by ``progress`` when the job was canceled; let it propagate."""


_current = threading.local()


def output_path(name):
    """A path in the current job's output folder, for the model to write a result to."""
    folder = getattr(_current, "output_dir", None)
    if folder is None:
        raise RuntimeError("output_path() is only available inside predict()")
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"output name {name!r} must be a plain file name")
    return pathlib.Path(folder) / name


def _set_output_dir(folder):
    _current.output_dir = folder
