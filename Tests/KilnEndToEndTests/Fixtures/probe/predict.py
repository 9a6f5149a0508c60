"""A test model: it reports what model code can see and do from inside the runtime.

Standard library only, so any interpreter runs it. Inputs: `seconds` to run for (reporting
progress, so a cancel stops it), `spawn` to start a grandchild process marked with that text on its
command line, `tamper` to rewrite its own cached code. Output `report`: the environment's
variable names, the user it runs as, whether it could write its own code and its version's
manifest, and the mark of the code that ran.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import kiln_runtime

# A tampering job appends a line that changes this; a later runtime of the same version must not
# run that.
VERSION_MARK = "original"


def _writable(path):
    """Whether `path` can be opened for appending (nothing is written)."""
    try:
        with open(path, "a"):
            return True
    except OSError:
        return False


class Predictor:
    def predict(self, inputs, progress):
        if inputs.get("spawn"):
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "kiln-probe-" + inputs["spawn"]])
        seconds = float(inputs.get("seconds", 0))
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            progress(min((time.monotonic() - started) / seconds, 0.99), "running")
            time.sleep(0.05)
        code = pathlib.Path(__file__)
        tampered = False
        if inputs.get("tamper"):
            try:
                os.chmod(code, 0o644)
                with open(code, "a") as source:
                    source.write('\nVERSION_MARK = "tampered"\n')
                tampered = True
            except OSError:
                pass
        report = {
            "mark": VERSION_MARK,
            "tampered": tampered,
            "environment": sorted(os.environ),
            "uid": os.getuid(),
            "code_writable": _writable(code),
            "manifest_writable": _writable(code.parent.parent / "manifest.json"),
        }
        out = kiln_runtime.output_path("report.json")
        out.write_text(json.dumps(report))
        return {"report": out}
