"""What a running prediction can ask of the runtime."""

import pathlib
import threading


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
