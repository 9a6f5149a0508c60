"""A small video network: a few convolutions conditioned on a prompt embedding (FiLM).

It is untrained (its weights are a fixed seeded initialisation), so its pictures mean nothing;
what it shows is the path a real model takes: a torch.nn.Module, a checkpoint loaded with
torch.load, inference on the GPU when there is one and on the CPU otherwise.
"""

import hashlib

import torch
from torch import nn

VOCABULARY = 4096


def tokens(prompt):
    """Words hashed into the embedding's vocabulary (stable across processes)."""
    ids = [int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little") % VOCABULARY for word in prompt.lower().split()]
    return torch.tensor(ids or [0], dtype=torch.long)


class VideoNet(nn.Module):
    def __init__(self, width=32, embedding=64):
        super().__init__()
        self.prompt = nn.EmbeddingBag(VOCABULARY, embedding, mode="mean")
        self.film = nn.Linear(embedding, 2 * width)
        self.encode = nn.Conv2d(4, width, 3, padding=1)
        self.body = nn.Sequential(nn.GELU(), nn.Conv2d(width, width, 3, padding=1), nn.GELU())
        self.decode = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, frames, time, prompt_tokens):
        """frames: (N, 3, H, W) in [0, 1]; time: (N,) in [0, 1]; returns frames in [0, 1]."""
        condition = self.prompt(prompt_tokens.unsqueeze(0))
        gamma, beta = self.film(condition).chunk(2, dim=1)
        clock = time.view(-1, 1, 1, 1).expand(-1, 1, frames.shape[2], frames.shape[3])
        hidden = self.encode(torch.cat([frames, clock], dim=1))
        hidden = hidden * (1 + gamma[..., None, None]) + beta[..., None, None]
        return torch.sigmoid(self.decode(self.body(hidden)) + torch.logit(frames.clamp(0.02, 0.98)))
