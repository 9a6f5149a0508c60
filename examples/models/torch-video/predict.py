"""Text-to-video and modify-video through a small PyTorch network (see network.py).

The checkpoint is loaded with the ordinary PyTorch calls and the network runs on the GPU when one
is visible, on the CPU otherwise.
"""

import av
import numpy as np
import torch

import kiln_runtime
from network import VideoNet, tokens


class Predictor:
    def setup(self, weights_dir):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = VideoNet()
        self.model.load_state_dict(torch.load(weights_dir / "model.pt", map_location="cpu", weights_only=True))
        self.model.to(self.device).eval()

    @torch.inference_mode()
    def predict(self, inputs, progress):
        prompt = tokens(inputs["prompt"]).to(self.device)
        out = kiln_runtime.output_path("video.mp4")
        if "video" in inputs:
            with av.open(str(inputs["video"])) as source:
                stream = source.streams.video[0]
                total, fps = stream.frames or 0, int(stream.average_rate or 12)
                frames = (frame.to_ndarray(format="rgb24") for frame in source.decode(stream))
                self._run(frames, total, fps, prompt, out, progress)
        else:
            count = int(inputs.get("num_frames", 16))
            height, width = int(inputs.get("height", 128)) // 2 * 2, int(inputs.get("width", 128)) // 2 * 2
            generator = torch.Generator().manual_seed(int(inputs.get("seed", 0)))
            start = torch.rand(3, height // 8, width // 8, generator=generator)
            start = torch.nn.functional.interpolate(start[None], size=(height, width), mode="bilinear")[0]
            frames = ((start.permute(1, 2, 0).numpy() * 255).astype(np.uint8) for _ in range(count))
            self._run(frames, count, int(inputs.get("fps", 12)), prompt, out, progress)
        return {"video": out}

    def _run(self, frames, total, fps, prompt, out, progress):
        container, stream = None, None
        for index, pixels in enumerate(frames):
            progress(index / total if total else 0.5, "rendering")
            if container is None:
                height, width = pixels.shape[0] // 2 * 2, pixels.shape[1] // 2 * 2
                container = av.open(str(out), "w")
                stream = container.add_stream("h264", rate=fps)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            x = torch.from_numpy(pixels[:height, :width]).to(self.device).permute(2, 0, 1)[None].float() / 255
            time = torch.tensor([index / max(total, 1)], device=self.device)
            y = self.model(x, time, prompt)[0].permute(1, 2, 0).mul(255).byte().cpu().numpy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(y), format="rgb24")):
                container.mux(packet)
        if container is None:
            raise ValueError("no frames to render")
        for packet in stream.encode():
            container.mux(packet)
        container.close()
        progress(1.0, "encoded")
