"""The process the Kiln worker starts for one model version.

It speaks JSON lines with the worker (the commands and events of `protocol`): commands on
stdin, events on the original stdout. The model's own prints (and anything its libraries print) go
to stderr, so they can never corrupt the protocol.

It leads a process group of its own, so that the worker can stop it with everything the model
started; with `--user` it drops to that user before any model code is loaded. Processes a
prediction starts end with it: when a job ends, the members of the group that appeared during it
are killed (those `setup` started stay).
"""

import argparse
import importlib.util
import os
import pathlib
import pwd
import signal
import sys
import threading
import traceback

from . import protocol


class Channel:
    """The protocol stream: the process's original stdout, written one whole line at a time."""

    def __init__(self):
        self._out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)  # from now on, print() and C libraries writing to fd 1 go to stderr
        sys.stdout = sys.stderr
        self._lock = threading.Lock()

    def send(self, event):
        line = protocol.line(event)
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()


def load_predictor(code_dir, entrypoint):
    file_name, _, class_name = entrypoint.partition(":")
    path = pathlib.Path(code_dir) / file_name
    sys.path.insert(0, str(code_dir))
    spec = importlib.util.spec_from_file_location("kiln_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, class_name)()


class Job:
    def __init__(self, channel, job_id):
        self.channel = channel
        self.id = job_id
        self.canceled = threading.Event()
        # Set before the job's last event is sent: once the worker has read that event, the runtime
        # takes the next job, even if this thread has not quite returned yet.
        self.ended = threading.Event()
        self.last = (-1.0, None)

    def end(self, event):
        self.ended.set()
        self.channel.send(event)

    def progress(self, fraction, stage=""):
        if self.canceled.is_set():
            raise protocol.Canceled()
        fraction = min(max(float(fraction), 0.0), 1.0)
        if (fraction, stage) != self.last:
            self.last = (fraction, stage)
            self.channel.send(protocol.progress(self.id, fraction, stage))


def group_members():
    """The other processes of this process group (Linux: read from /proc)."""
    group = os.getpgid(0)
    members = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ")".
                fields = stat.read().rsplit(b")", 1)[1].split()
            if int(fields[2]) == group:
                members.add(int(entry))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return members


def end_strays(before):
    """Kills the processes of the group that were not there before the job: what it left running."""
    for pid in group_members() - before:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def drop_privileges(user):
    """Becomes `user` (its uid, gid and no supplementary groups) for good."""
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.getuid() != entry.pw_uid or os.geteuid() != entry.pw_uid:
        raise SystemExit(f"kiln_runtime: could not become {user}")


def run_predict(channel, predictor, command, job):
    before = group_members()
    try:
        protocol._set_output_dir(command.output_dir)
        inputs = dict(command.inputs)
        for name, path in command.files.items():
            inputs[name] = pathlib.Path(path)
        result = predictor.predict(inputs, job.progress)
        if job.canceled.is_set():
            job.end(protocol.canceled(job.id))
            return
        if result is None:
            outputs = {}
        elif isinstance(result, dict):
            outputs = {str(name): str(path) for name, path in result.items()}
        else:
            outputs = {"output": str(result)}
        for name, path in outputs.items():
            if not os.path.isfile(path):
                raise FileNotFoundError(f"output {name!r} is not a file: {path}")
        job.end(protocol.done(job.id, outputs))
    except protocol.Canceled:
        job.end(protocol.canceled(job.id))
    except Exception as error:  # the model's failure, reported, not fatal to the runtime
        traceback.print_exc()
        job.end(protocol.error(job.id, type(error).__name__, error))
    finally:
        end_strays(before)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="kiln_runtime")
    parser.add_argument("--code", required=True)
    parser.add_argument("--entrypoint", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--user", help="drop to this user before loading any model code")
    args = parser.parse_args(argv)

    # A process group of its own: the worker kills the whole group, the model's children included.
    try:
        os.setsid()
    except OSError:
        pass  # already a group leader
    if args.user:
        drop_privileges(args.user)
    # The worker stops this process itself (shutdown, then SIGKILL): a terminal's Ctrl-C or a service
    # manager's SIGTERM meant for the worker must not cut a running prediction short. A handler, not
    # SIG_IGN: an ignored signal would stay ignored in every process the model starts.
    signal.signal(signal.SIGINT, lambda number, frame: None)
    signal.signal(signal.SIGTERM, lambda number, frame: None)
    channel = Channel()
    predictor = None
    current = None
    worker = None
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            command = protocol.parse_command(line)
        except ValueError as error:
            print(f"kiln_runtime: ignored a line that is not a command: {error}", file=sys.stderr)
            continue
        if isinstance(command, protocol.Setup):
            try:
                predictor = load_predictor(args.code, args.entrypoint)
                if hasattr(predictor, "setup"):
                    predictor.setup(pathlib.Path(args.weights))
                channel.send(protocol.ready())
            except Exception as error:
                traceback.print_exc()
                channel.send(protocol.setup_failed(f"{type(error).__name__}: {error}"))
        elif isinstance(command, protocol.Predict):
            if predictor is None:
                channel.send(protocol.error(command.id, "not_set_up", "predict before setup"))
                continue
            if current is not None and not current.ended.is_set():
                channel.send(protocol.error(command.id, "busy", "a prediction is running"))
                continue
            current = Job(channel, command.id)
            worker = threading.Thread(target=run_predict, args=(channel, predictor, command, current), daemon=True)
            worker.start()
        elif isinstance(command, protocol.Cancel):
            if current is not None and current.id == command.id:
                current.canceled.set()
        elif isinstance(command, protocol.Shutdown):
            break
    if worker is not None:
        worker.join(timeout=5)


if __name__ == "__main__":
    main()
