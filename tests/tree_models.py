"""Models people port, written in Flax the way Flax users write them, and torch ports written the way torch
users write them (their own names, NCHW, functional glue), correct and with planted mistakes."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import torch
import torch.nn.functional as F  # noqa: N812 (the torch users' name)
from flax import nnx


class CNN(nn.Module):
    """The MNIST CNN of the official Flax examples (examples/mnist/train.py)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(features=32, kernel_size=(3, 3))(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nn.Conv(features=64, kernel_size=(3, 3))(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))  # flatten
        x = nn.Dense(features=256)(x)
        x = nn.relu(x)
        x = nn.Dense(features=10)(x)
        return x


class TorchCNN(torch.nn.Module):
    """Its port as a torch user writes it: NCHW, F.avg_pool2d, torch.flatten, names of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = torch.nn.Linear(7 * 7 * 64, 256)
        self.fc2 = torch.nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


class ResBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.Conv(self.features, (3, 3), use_bias=False)(x)
        y = nn.BatchNorm(use_running_average=True)(y)
        y = nn.relu(y)
        y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
        y = nn.BatchNorm(use_running_average=True)(y)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """A ResNet-style stem, two residual blocks with BatchNorm (inference), global mean pooling, a head."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = ResBlock(8)(x)
        x = ResBlock(8)(x)
        return nn.Dense(3)(x.mean(axis=(1, 2)))


class TorchBlock(torch.nn.Module):
    def __init__(self, features: int, residual: bool = True) -> None:
        super().__init__()
        self.conv_a = torch.nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.bn_a = torch.nn.BatchNorm2d(features)
        self.conv_b = torch.nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.bn_b = torch.nn.BatchNorm2d(features)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn_b(self.conv_b(F.relu(self.bn_a(self.conv_a(x)))))
        return F.relu(x + y if self.residual else y)


class TorchResNet(torch.nn.Module):
    def __init__(self, residual: bool = True) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(2, 8, 3, padding=1)
        self.layers = torch.nn.Sequential(TorchBlock(8), TorchBlock(8, residual))
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(F.relu(self.stem(x))).mean(dim=(2, 3)))


class TransformerBlock(nn.Module):
    """A pre-LN transformer block: x + attention(LN(x)), then x + MLP(LN(x)) with Flax's tanh GELU."""

    heads: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        h = nn.MultiHeadDotProductAttention(num_heads=self.heads)(nn.LayerNorm()(x))
        x = x + h
        h = nn.Dense(4 * width)(nn.LayerNorm()(x))
        h = nn.Dense(width)(nn.gelu(h))
        return x + h


class TorchMLP(torch.nn.Module):
    def __init__(self, width: int, exact_gelu: bool = False) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(width, 4 * width)
        self.fc2 = torch.nn.Linear(4 * width, width)
        self.approximate = "none" if exact_gelu else "tanh"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class TorchTransformerBlock(torch.nn.Module):
    """The block on torch's nn.MultiheadAttention (packed in_proj)."""

    def __init__(self, width: int = 32, heads: int = 4, eps: float = 1e-6, exact_gelu: bool = False) -> None:
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(width, eps=eps)
        self.attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = torch.nn.LayerNorm(width, eps=1e-6)
        self.mlp = TorchMLP(width, exact_gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class SeparateAttention(torch.nn.Module):
    """Attention with separate q/k/v Linears, as many ports write it."""

    def __init__(self, width: int, heads: int, mistake: str = "") -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(width, width)
        self.k_proj = torch.nn.Linear(width, width)
        self.v_proj = torch.nn.Linear(width, width)
        self.o_proj = torch.nn.Linear(width, width)
        self.heads, self.mistake = heads, mistake

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        d = width // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, length, self.heads, d).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        if self.mistake == "swapped":
            q, k = k, q
        scale = 1 / d if self.mistake == "scale" else 1 / math.sqrt(d)
        weights = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
        return self.o_proj((weights @ v).transpose(1, 2).reshape(batch, length, width))


class TorchSeparateBlock(torch.nn.Module):
    def __init__(self, width: int = 32, heads: int = 4, mistake: str = "") -> None:
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(width, eps=1e-6)
        self.attention = SeparateAttention(width, heads, mistake)
        self.norm2 = torch.nn.LayerNorm(width, eps=1e-6)
        self.mlp = TorchMLP(width)
        self.mistake = mistake

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attention(self.norm1(x))
        x = h if self.mistake == "no-residual" else x + h
        return x + self.mlp(self.norm2(x))


class NNXBlock(nnx.Module):
    """A pre-LN residual MLP block written in Flax NNX: attributes, no Sequential."""

    def __init__(self, width: int, rngs: nnx.Rngs) -> None:
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.linear1 = nnx.Linear(width, 2 * width, rngs=rngs)
        self.linear2 = nnx.Linear(2 * width, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.linear2(nnx.gelu(self.linear1(self.norm(x))))


class NNXTransformerBlock(nnx.Module):
    """TransformerBlock written in Flax NNX: nnx.MultiHeadAttention (its q/k/v/out LinearGeneral) and Linears."""

    def __init__(self, width: int, heads: int, rngs: nnx.Rngs) -> None:
        self.ln1 = nnx.LayerNorm(width, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, width, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(width, rngs=rngs)
        self.up = nnx.Linear(width, 4 * width, rngs=rngs)
        self.down = nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x))
        return x + self.down(nnx.gelu(self.up(self.ln2(x))))


class NNXNet(nnx.Module):
    """An NNX model that is not a chain: a conv stem with BatchNorm, a residual block, a head."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.block = NNXBlock(8, rngs)
        self.head = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = nnx.relu(self.bn(self.conv(x))).mean(axis=(1, 2))
        return self.head(self.block(h))


class TorchNNXBlock(torch.nn.Module):
    def __init__(self, width: int, eps: float = 1e-6, residual: bool = True) -> None:
        super().__init__()
        self.ln = torch.nn.LayerNorm(width, eps=eps)
        self.up = torch.nn.Linear(width, 2 * width)
        self.down = torch.nn.Linear(2 * width, width)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(F.gelu(self.up(self.ln(x)), approximate="tanh"))
        return x + y if self.residual else y


class TorchNNXNet(torch.nn.Module):
    """The port of NNXNet with its own names, NCHW."""

    def __init__(self, eps: float = 1e-6, residual: bool = True) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.stem_bn = torch.nn.BatchNorm2d(8)
        self.body = TorchNNXBlock(8, eps, residual)
        self.out = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(F.relu(self.stem_bn(self.stem(x))).mean(dim=(2, 3))))


class MaskedAttention(nn.Module):
    """Self-attention under a boolean mask in Flax's convention (True = attend): a padding mask
    ``(batch, keys)`` or a pattern ``(queries, keys)``."""

    heads: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        full = mask[:, None, None, :] if mask.shape[0] == x.shape[0] else mask[None, None]
        return x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(nn.LayerNorm()(x), mask=full)


class TorchMaskedAttention(torch.nn.Module):
    """Its port: ``padding`` passes the mask as key_padding_mask, else as attn_mask; ``invert`` is the
    correct port (~mask), False the planted mistake (Flax's mask passed straight)."""

    def __init__(self, width: int = 16, heads: int = 4, padding: bool = True, invert: bool = True) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(width, eps=1e-6)
        self.attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.padding, self.invert = padding, invert

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        masked_out = ~mask if self.invert else mask
        h = self.norm(x)
        if self.padding:
            out = self.attn(h, h, h, key_padding_mask=masked_out, need_weights=False)[0]
        else:
            out = self.attn(h, h, h, attn_mask=masked_out, need_weights=False)[0]
        return x + out


class TiedLM(nn.Module):
    """A tiny language model whose output projection is the embedding table (``nn.Embed.attend``)."""

    vocab: int = 13
    width: int = 8

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        embed = nn.Embed(self.vocab, self.width)
        h = nn.relu(nn.Dense(self.width)(embed(tokens)))
        return embed.attend(nn.LayerNorm()(h))


class TorchTiedLM(torch.nn.Module):
    """Its port: ``lm_head`` shares the embedding weight (``tie``) or holds a copy of its own."""

    def __init__(self, vocab: int = 13, width: int = 8, tie: bool = True) -> None:
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, width)
        self.proj = torch.nn.Linear(width, width)
        self.ln = torch.nn.LayerNorm(width, eps=1e-6)
        self.lm_head = torch.nn.Linear(width, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.tok.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln(F.relu(self.proj(self.tok(tokens)))))


class ReluMLP(nn.Module):
    """relu between two Dense layers, with a skip: the relu is glue, not a call the tree captures."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(3)(nn.relu(nn.Dense(16)(x)) + x.sum(-1, keepdims=True))


class _DoubledBackward(torch.autograd.Function):
    """relu whose backward doubles the gradient: a custom backward gone wrong."""

    @staticmethod
    def forward(ctx: object, h: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h)  # type: ignore[attr-defined]
        return h.clamp(min=0)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        (h,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return 2 * grad * (h > 0)


class ClampedPort(torch.nn.Module):
    """The port as torch users may write it: clamp(min=0) for the relu (its gradient at exactly 0 is 1)."""

    def __init__(self, doubled_backward: bool = False, wrong_when_negative: bool = False) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(4, 16), torch.nn.Linear(16, 3)
        self.doubled_backward = doubled_backward
        self.wrong_when_negative = wrong_when_negative  # wrong only for some initialisations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = _DoubledBackward.apply(h) if self.doubled_backward else h.clamp(min=0)
        out = self.fc2(h + x.sum(-1, keepdim=True))
        return out + 1.0 if self.wrong_when_negative and self.fc1.weight[0, 0] < 0 else out


# SeparateAttention's projections by their names: a port whose forward uses them swapped ("swapped") is loaded so,
# and the check then finds the swap (without it, load_into picks the assignment that computes Flax's output)
SEPARATE_BY_NAME = {"*query": "attention.q_proj", "*key": "attention.k_proj", "*value": "attention.v_proj"}


class Wrapped(torch.nn.Module):
    """A port as torch users often hold it: a Sequential inside a module, so that it is checked and loaded as a
    call tree (its modules named under ``net.``)."""

    def __init__(self, net: torch.nn.Sequential) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
