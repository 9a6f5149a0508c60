"""Writes weights/model.pt: the network's seeded initialisation, the checkpoint this example ships."""

import pathlib

import torch

from network import VideoNet

if __name__ == "__main__":
    torch.manual_seed(0)
    path = pathlib.Path(__file__).parent / "weights" / "model.pt"
    torch.save(VideoNet().state_dict(), path)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
