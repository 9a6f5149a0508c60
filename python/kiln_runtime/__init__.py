"""The Kiln model runtime.

A model author writes a class with two methods and nothing else::

    class Predictor:
        def setup(self, weights_dir):
            ...  # load checkpoints from weights_dir (a pathlib.Path)

        def predict(self, inputs, progress):
            progress(0.5, "denoising")   # fraction 0..1 and a stage name
            path = kiln_runtime.output_path("out.mp4")
            ...
            return {"video": path}       # or just a path, named "output"

File inputs arrive as ``pathlib.Path`` objects. ``progress`` raises ``Canceled`` once the job
is canceled, so a model that reports progress stops within a frame.
"""

from .protocol import Canceled, output_path

__all__ = ["Canceled", "output_path"]
