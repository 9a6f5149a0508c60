"""A demo video model for Kiln. It is not a trained network.

text-to-video: a prompt and a length in; frames drawn from the prompt (colours and motion seeded by
its words). modify-video: an uploaded MP4 and a prompt in; every frame restyled by the prompt's
keywords (from weights/styles.json). Both write real H.264 MP4 files, report progress per frame,
and take time in proportion to frames x pixels.
"""

import hashlib
import json

import av
import numpy as np

import kiln_runtime


def _even(value):
    return max(2, int(value) // 2 * 2)


class Predictor:
    def setup(self, weights_dir):
        self.styles = json.loads((weights_dir / "styles.json").read_text())

    def predict(self, inputs, progress):
        prompt = inputs["prompt"]
        out = kiln_runtime.output_path("video.mp4")
        if "video" in inputs:
            self._modify(inputs["video"], prompt, inputs, out, progress)
        else:
            self._generate(prompt, inputs, out, progress)
        return {"video": out}

    # text-to-video

    def _generate(self, prompt, inputs, out, progress):
        frames = int(inputs.get("num_frames", 24))
        width, height = _even(inputs.get("width", 256)), _even(inputs.get("height", 256))
        seed = int.from_bytes(hashlib.sha256(f"{prompt}|{inputs.get('seed', 0)}".encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        ramp = np.linspace(0.0, 1.0, height)[:, None, None]
        background = (top * (1 - ramp) + bottom * ramp).astype(np.float32) * np.ones((1, width, 1), np.float32)
        blobs = [(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(-4, 4), rng.uniform(-4, 4),
                  rng.uniform(height / 12, height / 5), rng.integers(0, 256, 3)) for _ in range(3 + len(prompt.split()) % 5)]
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        with _Writer(out, width, height, int(inputs.get("fps", 12))) as writer:
            for index in range(frames):
                progress(index / frames, "drawing")
                frame = background.copy()
                for x, y, dx, dy, radius, colour in blobs:
                    cx, cy = (x + dx * index) % width, (y + dy * index) % height
                    mask = np.exp(-(((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * radius * radius)))[..., None]
                    frame = frame * (1 - mask) + colour * mask
                writer.write(frame)
        progress(1.0, "encoded")

    # modify-video

    def _modify(self, source, prompt, inputs, out, progress):
        words = set(prompt.lower().replace(",", " ").split())
        styles = [self.styles[word] for word in sorted(words) if word in self.styles]
        rng = np.random.default_rng(int(inputs.get("seed", 0)))
        with av.open(str(source)) as container:
            stream = container.streams.video[0]
            total = stream.frames or 0
            rate = int(stream.average_rate or inputs.get("fps", 12))
            writer = None
            for index, decoded in enumerate(container.decode(stream)):
                frame = decoded.to_ndarray(format="rgb24").astype(np.float32)
                if writer is None:
                    writer = _Writer(out, _even(frame.shape[1]), _even(frame.shape[0]), rate)
                for style in styles:
                    frame = _apply(style, frame, rng)
                if not styles:  # no keyword: tint by the prompt itself
                    tint = np.frombuffer(hashlib.sha256(prompt.encode()).digest()[:3], np.uint8) / 255.0
                    frame = frame * (0.6 + 0.4 * tint)
                writer.write(frame)
                progress(index / total if total else 0.5, "restyling")
            if writer is None:
                raise ValueError("the input video has no frames")
            writer.close()
        progress(1.0, "encoded")


def _apply(style, frame, rng):
    if "matrix" in style:
        frame = frame @ np.array(style["matrix"], np.float32).T
    if "tint" in style:
        frame = frame * np.array(style["tint"], np.float32)
    if style.get("invert"):
        frame = 255 - frame
    if "blur" in style:
        for _ in range(int(style["blur"])):
            frame = (frame + np.roll(frame, 1, 0) + np.roll(frame, -1, 0) + np.roll(frame, 1, 1) + np.roll(frame, -1, 1)) / 5
    if "flakes" in style:
        flakes = rng.random(frame.shape[:2]) < style["flakes"]
        frame[flakes] = 255
    return frame


class _Writer:
    """H.264 in an MP4, frames as float RGB arrays."""

    def __init__(self, path, width, height, fps):
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream("h264", rate=fps)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.width, self.height = width, height

    def write(self, frame):
        pixels = np.clip(frame[: self.height, : self.width], 0, 255).astype(np.uint8)
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")):
            self.container.mux(packet)

    def close(self):
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
