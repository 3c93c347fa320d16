"""A downstream model library, as a user of ckpt-compat would have one."""

from __future__ import annotations

import torch
from torch import nn


class TinyLM(nn.Module):
    """Clean: an embedding tied to the output head in the module tree, a norm, a causal mask
    computed the same way in every build (a non-persistent buffer that is fine)."""

    def __init__(self, vocab: int = 32, width: int = 16, context: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("mask", torch.ones(context, context).tril(), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.emb(ids))
        n = ids.shape[1]
        mixed = (self.mask[:n, :n] / self.mask[:n, :n].sum(-1, keepdim=True)) @ x
        return self.head(mixed)


class ScaledLM(TinyLM):
    """Bug: the output scale is a plain tensor attribute, never saved."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.rand(32) + 0.5

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) * self.scale


class ShiftedLM(TinyLM):
    """Bug: a random non-persistent buffer the outputs depend on."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.randn(32), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) + self.shift


class ReferenceTiedLM(nn.Module):
    """Bug: the head is tied to the embedding through a reference outside the module tree."""

    def __init__(self, vocab: int = 32, width: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.bias = nn.Parameter(torch.zeros(vocab))
        self.tied = [self.emb.weight]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.emb(ids), self.tied[0], self.bias)


def build() -> TinyLM:
    """The factory ckpt-compat calls (check --model mylib:build, checkpoint_roundtrip)."""
    return TinyLM()


def example_inputs() -> torch.Tensor:
    return torch.arange(12).reshape(2, 6) % 32
