"""A tiny Llama-style transformer whose module names match the tensor-parallel plans in ``parallel.py``.

Shape legend (used in the comments of this folder):
    B batch, S sequence length, D model dim, N number of attention heads, Dh = D / N head dim,
    F feed-forward hidden dim, V vocabulary size, P tensor-parallel degree (``tp_size``).

The model takes float activations ``x: (B, S, D)`` (not token ids) so that the gradient with respect
to the input is a tensor we can compare across parallelisms, and returns logits ``(B, S, V)``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F  # noqa: N812 (the usual PyTorch alias)
from torch import nn


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    dim: int = 64
    num_heads: int = 4
    hidden_dim: int = 128
    vocab_size: int = 64
    num_layers: int = 2
    batch_size: int = 2
    seq_len: int = 8

    def validate(self) -> None:
        """Raise ``ValueError`` for shapes that no parallelism could run (independent of world size)."""
        for name in ("dim", "num_heads", "hidden_dim", "vocab_size", "num_layers", "batch_size", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"{name} must be a positive int, got {value!r}: pass --{name}=<integer >= 1>"
                )
        if self.dim % self.num_heads != 0:
            raise ValueError(
                f"dim={self.dim} must be divisible by num_heads={self.num_heads} "
                "(head dim = dim / num_heads); change dim or num_heads"
            )


class Attention(nn.Module):
    """Causal multi-head self-attention without biases (wq/wk/wv column-, wo row-parallel under TP)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.head_dim = config.dim // config.num_heads
        self.wq = nn.Linear(config.dim, config.dim, bias=False)
        self.wk = nn.Linear(config.dim, config.dim, bias=False)
        self.wv = nn.Linear(config.dim, config.dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, _ = x.shape
        # (B, S, D) -> (B, N, S, Dh). The head count is inferred (-1) so that the same code runs on the
        # local shard under tensor parallelism, where wq/wk/wv produce only N / P heads.
        q, k, v = (
            w(x).view(batch_size, seq_len, -1, self.head_dim).transpose(1, 2)
            for w in (self.wq, self.wk, self.wv)
        )
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        # (B, N, S, Dh) -> (B, S, N * Dh)
        return self.wo(out.transpose(1, 2).reshape(batch_size, seq_len, -1))


class FeedForward(nn.Module):
    """``w2(gelu(w1(x)))`` with biases, so that row-parallel bias handling is exercised too."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.hidden_dim)
        self.w2 = nn.Linear(config.hidden_dim, config.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x)))


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(config.dim)
        self.attention = Attention(config)
        self.ffn_norm = nn.RMSNorm(config.dim)
        self.feed_forward = FeedForward(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """``x: (B, S, D)`` -> blocks -> final norm -> ``output`` projection -> logits ``(B, S, V)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.norm = nn.RMSNorm(config.dim)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        # RMSNorm weights start at one; perturb them so that a wrong norm-weight gradient would show.
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.RMSNorm):
                    module.weight.add_(0.1 * torch.randn_like(module.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x))


def make_inputs(config: ModelConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Float activations ``x: (B, S, D)`` (requires grad) and integer targets ``(B, S)`` in ``[0, V)``."""
    x = torch.randn(config.batch_size, config.seq_len, config.dim, device=device, requires_grad=True)
    targets = torch.randint(0, config.vocab_size, (config.batch_size, config.seq_len), device=device)
    return x, targets


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy; ``logits: (B, S, V)``, ``targets: (B, S)``."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(0, 1))
