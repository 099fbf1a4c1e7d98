"""Flax models for the any-model conversion (``to_torch(model, variables, inputs)``), beyond tree_models.py:
pooling of both kinds with a strided convolution, and a small token model."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class PoolCNN(nn.Module):
    """Max and average pooling (SAME and VALID), a strided convolution, a flatten and a head."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2))(x))
        x = nn.avg_pool(x, (3, 3), strides=(1, 1), padding="SAME", count_include_pad=False)
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(10)(x)


class TokenModel(nn.Module):
    """Embed, masked self-attention, mean over the sequence, a head, log_softmax."""

    vocab: int = 50
    width: int = 16

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = nn.Embed(self.vocab, self.width)(tokens)
        mask = nn.make_attention_mask(tokens > 0, tokens > 0)
        x = x + nn.MultiHeadDotProductAttention(num_heads=2)(nn.LayerNorm()(x), mask=mask)
        x = jnp.mean(x, axis=1)
        return jax.nn.log_softmax(nn.Dense(5)(x))


class Glue(nn.Module):
    """A parameter used between layers (a learned scale), a module of the user's own, and two inputs."""

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> dict[str, jax.Array]:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        h = nn.Dense(8)(x * scale) + bias
        return {"out": jnp.tanh(h), "norm": jnp.sqrt(jnp.sum(h * h, axis=-1))}


class Intermediate(nn.Module):
    """A Dense and its activation in a module of their own, as Hugging Face's Flax BERT writes them."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.gelu(nn.Dense(32)(x), approximate=False)


class SmallEncoder(nn.Module):
    """Keyword inputs as Hugging Face's Flax models take them: arrays, None and a Python bool."""

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array, head_mask: None = None, deterministic: bool = True
    ) -> dict[str, jax.Array]:
        x = nn.Embed(30, 16)(input_ids)
        x = nn.Dropout(0.1, deterministic=deterministic)(x)
        x = x * attention_mask[..., None]
        hidden = nn.LayerNorm()(x + nn.Dense(16)(Intermediate()(x)))
        return {"last_hidden_state": hidden, "pooler_output": jnp.tanh(nn.Dense(16)(hidden[:, 0]))}
