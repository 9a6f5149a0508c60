"""The runtime against real model processes: protocol, prints kept off it, cancel, errors."""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import pytest

PYTHON_DIR = pathlib.Path(__file__).resolve().parents[1]
DEMO = PYTHON_DIR.parent / "examples" / "models" / "demo-video"


class Runtime:
    def __init__(self, code, entrypoint="predict.py:Predictor", weights=None):
        env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kiln_runtime", "--code", str(code), "--entrypoint", entrypoint, "--weights", str(weights or code)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def send(self, **command):
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def event(self):
        line = self.process.stdout.readline()
        assert line, "the runtime closed its protocol stream"
        return json.loads(line)

    def until(self, kinds):
        while True:
            event = self.event()
            if event["event"] in kinds:
                return event

    def close(self):
        self.send(op="shutdown")
        self.process.wait(timeout=10)


def model(tmp_path, body):
    (tmp_path / "predict.py").write_text(body)
    return tmp_path


def test_prints_stay_off_the_protocol_and_outputs_come_back(tmp_path):
    code = model(tmp_path, """
import kiln_runtime
class Predictor:
    def setup(self, weights_dir):
        print("loading weights")
    def predict(self, inputs, progress):
        print("noise on stdout")
        progress(0.5, "halfway")
        path = kiln_runtime.output_path("out.txt")
        path.write_text(inputs["text"].upper())
        return {"text": path}
""")
    runtime = Runtime(code)
    runtime.send(op="setup")
    assert runtime.event() == {"event": "ready"}
    out = tempfile.mkdtemp()
    runtime.send(op="predict", id="gen_1", inputs={"text": "hi"}, files={}, output_dir=out)
    assert runtime.event() == {"event": "progress", "id": "gen_1", "fraction": 0.5, "stage": "halfway"}
    done = runtime.event()
    assert done["event"] == "done"
    assert pathlib.Path(done["outputs"]["text"]).read_text() == "HI"
    runtime.close()
    assert "noise on stdout" in runtime.process.stderr.read()


def test_cancel_stops_a_running_predict_at_its_next_progress_call(tmp_path):
    code = model(tmp_path, """
import time
class Predictor:
    def predict(self, inputs, progress):
        for i in range(10000):
            progress(i / 10000, "working")
            time.sleep(0.01)
""")
    runtime = Runtime(code)
    runtime.send(op="setup")
    runtime.until({"ready"})
    runtime.send(op="predict", id="gen_2", inputs={}, files={}, output_dir=tempfile.mkdtemp())
    runtime.until({"progress"})
    runtime.send(op="cancel", id="gen_2")
    # The prediction (100 s of steps) ends as canceled, long before its last step.
    last = 0.0
    while True:
        event = runtime.event()
        if event["event"] == "progress":
            last = event["fraction"]
            continue
        break
    assert event == {"event": "canceled", "id": "gen_2"}
    assert last < 0.5
    # And the runtime is free for the next job.
    runtime.send(op="predict", id="gen_3", inputs={}, files={}, output_dir=tempfile.mkdtemp())
    assert runtime.event()["id"] == "gen_3"
    runtime.send(op="cancel", id="gen_3")
    assert runtime.until({"canceled", "done", "error"})["event"] == "canceled"
    runtime.close()


def test_a_failing_model_reports_an_error_and_the_runtime_survives(tmp_path):
    code = model(tmp_path, """
class Predictor:
    def predict(self, inputs, progress):
        if inputs.get("fail"):
            raise ValueError("bad prompt")
        return None
""")
    runtime = Runtime(code)
    runtime.send(op="setup")
    runtime.until({"ready"})
    runtime.send(op="predict", id="a", inputs={"fail": True}, files={}, output_dir=tempfile.mkdtemp())
    error = runtime.until({"error", "done"})
    assert (error["event"], error["code"], error["message"]) == ("error", "ValueError", "bad prompt")
    runtime.send(op="predict", id="b", inputs={}, files={}, output_dir=tempfile.mkdtemp())
    assert runtime.until({"error", "done"}) == {"event": "done", "id": "b", "outputs": {}}
    runtime.close()


def test_setup_failure_is_reported(tmp_path):
    code = model(tmp_path, "class Predictor:\n    def setup(self, weights_dir):\n        raise RuntimeError('no checkpoint')\n")
    runtime = Runtime(code)
    runtime.send(op="setup")
    event = runtime.event()
    assert event["event"] == "setup_failed"
    assert "no checkpoint" in event["message"]
    runtime.close()


av = pytest.importorskip("av")


def frames_of(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame for frame in container.decode(stream)]
        return len(frames), frames[0].width, frames[0].height, stream.codec_context.name


def test_demo_model_text_to_video_and_modify_video():
    runtime = Runtime(DEMO, weights=DEMO / "weights")
    runtime.send(op="setup")
    assert runtime.event() == {"event": "ready"}
    out = pathlib.Path(tempfile.mkdtemp())
    runtime.send(op="predict", id="t2v", inputs={"prompt": "a red kiln at dusk", "num_frames": 10, "width": 96, "height": 64, "fps": 8},
                 files={}, output_dir=str(out))
    done = runtime.until({"done", "error"})
    assert done["event"] == "done", done
    clip = pathlib.Path(done["outputs"]["video"])
    assert frames_of(clip) == (10, 96, 64, "h264")

    modified = pathlib.Path(tempfile.mkdtemp())
    runtime.send(op="predict", id="mod", inputs={"prompt": "make it snow at night", "seed": 3}, files={"video": str(clip)},
                 output_dir=str(modified))
    result = runtime.until({"done", "error"})
    assert result["event"] == "done", result
    assert frames_of(result["outputs"]["video"]) == (10, 96, 64, "h264")
    runtime.close()


TORCH_EXAMPLE = PYTHON_DIR.parent / "examples" / "models" / "torch-video"


def test_torch_example_text_to_video_and_modify_video():
    pytest.importorskip("torch")
    runtime = Runtime(TORCH_EXAMPLE, weights=TORCH_EXAMPLE / "weights")
    runtime.send(op="setup")
    assert runtime.event() == {"event": "ready"}
    out = pathlib.Path(tempfile.mkdtemp())
    runtime.send(op="predict", id="t2v", inputs={"prompt": "a kiln in the rain", "num_frames": 6, "width": 64, "height": 48},
                 files={}, output_dir=str(out))
    done = runtime.until({"done", "error"})
    assert done["event"] == "done", done
    clip = pathlib.Path(done["outputs"]["video"])
    assert frames_of(clip) == (6, 64, 48, "h264")
    modified = pathlib.Path(tempfile.mkdtemp())
    runtime.send(op="predict", id="mod", inputs={"prompt": "golden hour"}, files={"video": str(clip)}, output_dir=str(modified))
    result = runtime.until({"done", "error"})
    assert result["event"] == "done", result
    assert frames_of(result["outputs"]["video"]) == (6, 64, 48, "h264")
    runtime.close()


def test_torch_example_checkpoint_is_the_one_make_weights_writes(tmp_path):
    torch = pytest.importorskip("torch")
    shipped = torch.load(TORCH_EXAMPLE / "weights" / "model.pt", weights_only=True)
    subprocess.run([sys.executable, "-c", f"import sys, torch; sys.path.insert(0, {str(TORCH_EXAMPLE)!r}); from network import VideoNet; "
                    f"torch.manual_seed(0); torch.save(VideoNet().state_dict(), {str(tmp_path / 'model.pt')!r})"], check=True)
    remade = torch.load(tmp_path / "model.pt", weights_only=True)
    assert shipped.keys() == remade.keys()
    assert all(torch.equal(shipped[name], remade[name]) for name in shipped)


def test_commands_parse_into_types_and_bad_lines_name_the_problem():
    sys.path.insert(0, str(PYTHON_DIR))
    from kiln_runtime import protocol

    predict = protocol.parse_command('{"op":"predict","id":"gen_1","inputs":{"a":1},"files":{"v":"/x"},"output_dir":"/o"}')
    assert predict == protocol.Predict(id="gen_1", inputs={"a": 1}, files={"v": "/x"}, output_dir="/o")
    assert protocol.parse_command('{"op":"cancel","id":"gen_1"}') == protocol.Cancel(id="gen_1")
    assert protocol.parse_command('{"op":"setup"}') == protocol.Setup()
    for line, message in [
        ("not json", "not JSON"),
        ("[1]", "a command is a JSON object"),
        ('{"op":"launch"}', "unknown op 'launch'"),
        ('{"op":"predict","id":"gen_1"}', "predict: missing field 'output_dir'"),
    ]:
        with pytest.raises(ValueError, match=message):
            protocol.parse_command(line)


def test_a_line_that_is_not_a_command_is_skipped_and_the_runtime_goes_on(tmp_path):
    code = tmp_path / "model"
    code.mkdir()
    (code / "predict.py").write_text("class Predictor:\n    def predict(self, inputs, progress):\n        return None\n")
    runtime = Runtime(code)
    try:
        runtime.process.stdin.write('{"op":"launch"}\n')
        runtime.send(op="setup")
        assert runtime.until({"ready", "setup_failed"})["event"] == "ready"
        runtime.send(op="predict", id="gen_1", inputs={}, files={}, output_dir=str(tmp_path))
        assert runtime.until({"done", "error"}) == {"event": "done", "id": "gen_1", "outputs": {}}
    finally:
        runtime.close()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie no one has reaped yet is gone too.
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _until(condition, seconds=10):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_processes_a_prediction_starts_end_with_it_and_inherit_no_ignored_signal(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    code = model(tmp_path, f"""
import pathlib, subprocess, time
MARKS = pathlib.Path({str(marks)!r})
class Predictor:
    def setup(self, weights_dir):
        # A helper started by setup serves every job: it stays.
        self.helper = subprocess.Popen(["sleep", "300"])
        (MARKS / "helper").write_text(str(self.helper.pid))
    def predict(self, inputs, progress):
        # Written whole, then renamed: the test reads it only once it is complete.
        child = subprocess.Popen(["sh", "-c", "grep SigIgn /proc/self/status > {marks}/sigign.part && mv {marks}/sigign.part {marks}/sigign; exec sleep 300"])
        (MARKS / "child").write_text(str(child.pid))
        for i in range(10000):
            progress(i / 10000, "working")
            time.sleep(0.01)
""")
    runtime = Runtime(code)
    runtime.send(op="setup")
    runtime.until({"ready"})
    assert os.getpgid(runtime.process.pid) == runtime.process.pid, "the runtime leads its own process group"
    runtime.send(op="predict", id="gen_c", inputs={}, files={}, output_dir=tempfile.mkdtemp())
    runtime.until({"progress"})
    assert _until(lambda: (marks / "child").exists() and (marks / "sigign").exists())
    child = int((marks / "child").read_text())
    helper = int((marks / "helper").read_text())
    # SIGINT (bit 1) and SIGTERM (bit 14) are not ignored in what the model starts.
    ignored = int((marks / "sigign").read_text().split()[1], 16)
    assert ignored & (1 << (signal_number("SIGINT") - 1)) == 0
    assert ignored & (1 << (signal_number("SIGTERM") - 1)) == 0
    runtime.send(op="cancel", id="gen_c")
    assert runtime.until({"canceled", "done", "error"})["event"] == "canceled"
    assert _until(lambda: not _alive(child)), "the prediction's child ends with it"
    assert _alive(helper), "setup's helper stays for the next job"
    runtime.close()
    os.kill(helper, 9)


def signal_number(name):
    import signal
    return int(getattr(signal, name))


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_user_drops_privileges_before_model_code_runs():
    import pwd
    nobody = pwd.getpwnam("nobody")
    code = pathlib.Path(tempfile.mkdtemp())
    code.chmod(0o755)
    (code / "predict.py").write_text("""
import json, os, pathlib
import kiln_runtime
class Predictor:
    def predict(self, inputs, progress):
        here = pathlib.Path(__file__)
        try:
            here.write_text("changed")
            writable = True
        except OSError:
            writable = False
        out = kiln_runtime.output_path("who.json")
        out.write_text(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "code_writable": writable}))
        return {"who": out}
""")
    (code / "predict.py").chmod(0o644)
    out = pathlib.Path(tempfile.mkdtemp())
    out.chmod(0o777)
    env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR))
    process = subprocess.Popen(
        [sys.executable, "-m", "kiln_runtime", "--code", str(code), "--entrypoint", "predict.py:Predictor", "--weights", str(code),
         "--user", "nobody"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    runtime = Runtime.__new__(Runtime)
    runtime.process = process
    runtime.send(op="setup")
    assert runtime.until({"ready", "setup_failed"})["event"] == "ready"
    runtime.send(op="predict", id="gen_u", inputs={}, files={}, output_dir=str(out))
    done = runtime.until({"done", "error"})
    assert done["event"] == "done", process.stderr.read() if done["event"] != "done" else ""
    who = json.loads(pathlib.Path(done["outputs"]["who"]).read_text())
    assert who["uid"] == nobody.pw_uid and who["gid"] == nobody.pw_gid
    assert who["groups"] == []
    assert who["code_writable"] is False
    runtime.close()
