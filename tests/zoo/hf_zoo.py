"""A zoo of tiny Hugging Face model pairs (Flax linen module <-> transformers PyTorch model) for the bridge.

Needs transformers < 5 (4.57.x still ships the Flax models); transformers is imported lazily, in ``build``.
Nothing is downloaded: every model is a tiny config with random weights.

``build(name, batch=2) -> ZooCase`` for each name in ``ARCHITECTURES``. A case holds:

- ``flax_module``: the linen module (``FlaxXxxModel(config, seed=0).module``), called as
  ``flax_module.apply(variables, **inputs)`` (the module itself, not the FlaxPreTrainedModel wrapper: every
  argument is explicit, images are NHWC, no rngs);
- ``variables``: ``{"params": params}`` (ResNet: ``{"params": ..., "batch_stats": ...}``), perturbed
  deterministically (``perturb``) so that norms, biases and batch statistics are not the trivial 1/0;
- ``torch_inputs``: the same data as torch tensors, as keyword arguments of the HF PyTorch model's forward
  (images NCHW, ids int64);
- ``make_torch()``: a fresh HF PyTorch model of the same config, ``.eval()``, float32, random init (seeded:
  two calls give the same weights, so tensors that Flax does not hold agree between two ports);
- ``make_reference()``: ``make_torch()`` with the Flax weights loaded by Hugging Face's own converter
  ``transformers.modeling_flax_pytorch_utils.load_flax_weights_in_pytorch_model``;
- ``output_key``: the main output tensor, in both frameworks' outputs (``out[output_key]``);
- ``batch_inputs(batch) -> (inputs, torch_inputs)``: the same kind of inputs at another batch size.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ARCHITECTURES: tuple[str, ...] = (
    "gpt2", "llama", "t5", "vit", "resnet", "clip_vision", "clip_text", "wav2vec2", "bart", "distilbert", "opt",
    "whisper",
)  # fmt: skip

PERTURB_SCALE = 0.1
_VOCAB = 99
_SEQ = 12
_DECODER_SEQ = 8


@dataclass(frozen=True)
class ZooCase:
    name: str
    flax_module: Any
    variables: dict[str, Any]
    inputs: dict[str, Any]
    torch_inputs: dict[str, Any]
    make_torch: Callable[[], Any]
    make_reference: Callable[[], Any]
    output_key: str
    batch_inputs: Callable[[int], tuple[dict[str, Any], dict[str, Any]]]
    config: Any = field(default=None, compare=False)
    flax_model: Any = field(default=None, compare=False, repr=False)  # the FlaxPreTrainedModel wrapper


# --- jax compatibility ------------------------------------------------------------------------------------


def patch_jnp_clip_for_transformers_t5() -> None:
    """Let ``jnp.clip`` take numpy's old ``a_min``/``a_max`` keywords again (idempotent, process-wide).

    transformers' Flax T5 calls ``jnp.clip(x, a_max=...)`` (relative position buckets); jax 0.10 removed
    those keywords (``min``/``max`` only) and raises ``TypeError: clip() got an unexpected keyword argument
    'a_max'``. The wrapper maps them to ``min``/``max`` and is otherwise ``jnp.clip`` itself.
    """
    import jax.numpy as jnp

    if getattr(jnp.clip, "_zoo_a_min_a_max", False):
        return
    original = jnp.clip

    @functools.wraps(original)
    def clip(arr=None, /, min=None, max=None, *, a_min=None, a_max=None, **kwargs):
        if a_min is not None:
            min = a_min
        if a_max is not None:
            max = a_max
        return original(arr, min=min, max=max, **kwargs)

    clip._zoo_a_min_a_max = True  # type: ignore[attr-defined]
    jnp.clip = clip


# --- parameters -------------------------------------------------------------------------------------------


def perturb(variables: dict[str, Any], scale: float = PERTURB_SCALE, seed: int = 0) -> dict[str, Any]:
    """Add deterministic noise to every bias and every norm scale (and BatchNorm statistics).

    Leaves named ``bias`` or ``scale`` (flax LayerNorm/BatchNorm), and 1-d leaves named ``weight`` (the
    RMSNorm/T5 LayerNorm of Llama and T5) get ``normal(0, scale)`` added; ``batch_stats`` means get the same,
    variances are multiplied by ``exp(normal(0, scale))``. One ``numpy.random.default_rng(seed)`` is drawn
    from over the flattened tree in sorted path order; every other leaf is kept (as float32 jax arrays).
    """
    import jax.numpy as jnp
    from flax.core import unfreeze
    from flax.traverse_util import flatten_dict, unflatten_dict

    flat = flatten_dict(unfreeze(variables))
    rng = np.random.default_rng(seed)
    out = {}
    for path in sorted(flat, key=lambda p: tuple(str(k) for k in p)):
        value = np.asarray(flat[path])
        leaf = str(path[-1])
        if path[0] == "batch_stats" and leaf == "mean":
            value = value + rng.normal(0.0, scale, value.shape)
        elif path[0] == "batch_stats" and leaf == "var":
            value = value * np.exp(rng.normal(0.0, scale, value.shape))
        elif leaf in ("bias", "scale") or (leaf == "weight" and value.ndim == 1):
            value = value + rng.normal(0.0, scale, value.shape)
        out[path] = jnp.asarray(value.astype(np.float32))
    return unflatten_dict(out)


# --- inputs -----------------------------------------------------------------------------------------------


def _rng(batch: int) -> np.random.Generator:
    return np.random.default_rng(1000 + batch)


def _ids(rng: np.random.Generator, batch: int, seq: int, low: int = 3) -> np.ndarray:
    return rng.integers(low, _VOCAB, size=(batch, seq)).astype(np.int32)


def _padded_mask(batch: int, seq: int) -> np.ndarray:
    """Ones, with the last row right-padded over its last quarter (batch >= 2)."""
    mask = np.ones((batch, seq), np.int32)
    if batch >= 2:
        mask[-1, seq - seq // 4 :] = 0
    return mask


def _positions(batch: int, seq: int) -> np.ndarray:
    return np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy()


def _to_torch(inputs: dict[str, Any], float_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    import torch

    out = {}
    for key, value in inputs.items():
        if not isinstance(value, np.ndarray):
            continue
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        out[key] = tensor.float() if value.dtype.kind == "f" or key in float_keys else tensor.long()
    return out


def _nhwc_to_nchw(inputs: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {"pixel_values": torch.from_numpy(np.ascontiguousarray(inputs["pixel_values"].transpose(0, 3, 1, 2)))}


# --- the architectures ------------------------------------------------------------------------------------
# Each returns (config, FlaxClass, TorchClass, batch_inputs, output_key, flax_init_kwargs).


def _text_inputs(*, positions: bool) -> Callable[[int], tuple[dict[str, Any], dict[str, Any]]]:
    """``batch_inputs`` of an encoder or decoder that takes ids, a padded mask and (``positions``) position ids."""

    def batch_inputs(batch: int) -> tuple[dict[str, Any], dict[str, Any]]:
        rng = _rng(batch)
        inputs: dict[str, Any] = {"input_ids": _ids(rng, batch, _SEQ), "attention_mask": _padded_mask(batch, _SEQ)}
        if positions:
            inputs["position_ids"] = _positions(batch, _SEQ)
        inputs["deterministic"] = True
        return inputs, _to_torch(inputs)

    return batch_inputs


def _text_ids_tokens() -> dict[str, int]:
    return {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def _spec_gpt2(t: Any):
    config = t.GPT2Config(
        vocab_size=_VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4, attn_implementation="eager",
        **_text_ids_tokens(),
    )  # fmt: skip

    batch_inputs = _text_inputs(positions=True)
    return config, t.FlaxGPT2Model, t.GPT2Model, batch_inputs, "last_hidden_state", {}


def _spec_llama(t: Any):
    config = t.LlamaConfig(
        vocab_size=_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, attn_implementation="eager", **_text_ids_tokens(),
    )  # fmt: skip

    batch_inputs = _text_inputs(positions=True)
    return config, t.FlaxLlamaModel, t.LlamaModel, batch_inputs, "last_hidden_state", {}


def _spec_t5(t: Any):
    config = t.T5Config(
        vocab_size=_VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, attn_implementation="eager",
    )  # fmt: skip

    def batch_inputs(batch: int):
        rng = _rng(batch)
        inputs = {
            "input_ids": _ids(rng, batch, _SEQ),
            "attention_mask": _padded_mask(batch, _SEQ),
            "decoder_input_ids": _ids(rng, batch, _DECODER_SEQ),
            "decoder_attention_mask": np.ones((batch, _DECODER_SEQ), np.int32),
            "deterministic": True,
        }
        return inputs, _to_torch(inputs)

    return config, t.FlaxT5Model, t.T5Model, batch_inputs, "last_hidden_state", {}


def _spec_vit(t: Any):
    config = t.ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, attn_implementation="eager",
    )  # fmt: skip

    def batch_inputs(batch: int):
        inputs = {
            "pixel_values": _rng(batch).normal(size=(batch, 32, 32, 3)).astype(np.float32),  # NHWC
            "deterministic": True,
        }
        return inputs, _nhwc_to_nchw(inputs)

    return config, t.FlaxViTModel, t.ViTModel, batch_inputs, "last_hidden_state", {}


def _spec_resnet(t: Any):
    config = t.ResNetConfig(
        num_channels=3, embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], layer_type="bottleneck",
        hidden_act="relu",
    )  # fmt: skip

    def batch_inputs(batch: int):
        inputs = {
            "pixel_values": _rng(batch).normal(size=(batch, 32, 32, 3)).astype(np.float32),  # NHWC
            "deterministic": True,
        }
        return inputs, _nhwc_to_nchw(inputs)

    # The Flax module returns last_hidden_state NCHW (it transposes back), like torch.
    return config, t.FlaxResNetModel, t.ResNetModel, batch_inputs, "last_hidden_state", {"input_shape": (1, 32, 32, 3)}


def _spec_clip_vision(t: Any):
    config = t.CLIPVisionConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=16, attn_implementation="eager",
    )  # fmt: skip

    def batch_inputs(batch: int):
        inputs = {
            "pixel_values": _rng(batch).normal(size=(batch, 32, 32, 3)).astype(np.float32),  # NHWC
            "deterministic": True,
        }
        return inputs, _nhwc_to_nchw(inputs)

    return config, t.FlaxCLIPVisionModel, t.CLIPVisionModel, batch_inputs, "last_hidden_state", {}


def _spec_clip_text(t: Any):
    config = t.CLIPTextConfig(
        vocab_size=_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=32, projection_dim=16, attn_implementation="eager", **_text_ids_tokens(),
    )  # fmt: skip

    def batch_inputs(batch: int):
        rng = _rng(batch)
        ids = _ids(rng, batch, _SEQ)
        ids[:, -1] = 2  # an eos token (the pooler takes it)
        inputs = {
            "input_ids": ids,
            "attention_mask": _padded_mask(batch, _SEQ),
            "position_ids": _positions(batch, _SEQ),
            "deterministic": True,
        }
        return inputs, _to_torch(inputs)

    return config, t.FlaxCLIPTextModel, t.CLIPTextModel, batch_inputs, "last_hidden_state", {}


def _spec_wav2vec2(t: Any):
    config = t.Wav2Vec2Config(
        vocab_size=_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), conv_bias=True,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="layer",
        do_stable_layer_norm=True, attn_implementation="eager",
    )  # fmt: skip

    def batch_inputs(batch: int):
        inputs = {
            "input_values": _rng(batch).normal(size=(batch, 400)).astype(np.float32),
            "attention_mask": np.ones((batch, 400), np.int32),
            "deterministic": True,
            "return_dict": True,  # the module's default is None, which returns a tuple
        }
        return inputs, _to_torch(inputs)

    return config, t.FlaxWav2Vec2Model, t.Wav2Vec2Model, batch_inputs, "last_hidden_state", {"input_shape": (1, 400)}


def _spec_bart(t: Any):
    config = t.BartConfig(
        vocab_size=_VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32,
        decoder_start_token_id=2, forced_eos_token_id=None, attn_implementation="eager", **_text_ids_tokens(),
    )  # fmt: skip

    def batch_inputs(batch: int):
        rng = _rng(batch)
        inputs = {
            "input_ids": _ids(rng, batch, _SEQ),
            "attention_mask": _padded_mask(batch, _SEQ),
            "decoder_input_ids": _ids(rng, batch, _DECODER_SEQ),
            "decoder_attention_mask": np.ones((batch, _DECODER_SEQ), np.int32),
            "position_ids": _positions(batch, _SEQ),
            "decoder_position_ids": _positions(batch, _DECODER_SEQ),
            "deterministic": True,
        }
        torch_inputs = _to_torch(inputs)
        del torch_inputs["position_ids"], torch_inputs["decoder_position_ids"]  # BartModel.forward has neither
        return inputs, torch_inputs

    return config, t.FlaxBartModel, t.BartModel, batch_inputs, "last_hidden_state", {}


def _spec_distilbert(t: Any):
    config = t.DistilBertConfig(
        vocab_size=_VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=32, pad_token_id=0,
        attn_implementation="eager",
    )  # fmt: skip

    batch_inputs = _text_inputs(positions=False)
    return config, t.FlaxDistilBertModel, t.DistilBertModel, batch_inputs, "last_hidden_state", {}


def _spec_opt(t: Any):
    config = t.OPTConfig(
        vocab_size=_VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
        max_position_embeddings=32, word_embed_proj_dim=32, attn_implementation="eager", **_text_ids_tokens(),
    )  # fmt: skip

    def batch_inputs(batch: int):
        rng = _rng(batch)
        mask = _padded_mask(batch, _SEQ)
        inputs = {
            "input_ids": _ids(rng, batch, _SEQ),
            "attention_mask": mask,
            # what both wrappers compute from the mask (the model adds its offset 2)
            "position_ids": (np.cumsum(mask, axis=1) * mask - 1).astype(np.int32),
            "deterministic": True,
        }
        return inputs, _to_torch(inputs)

    return config, t.FlaxOPTModel, t.OPTModel, batch_inputs, "last_hidden_state", {}


def _spec_whisper(t: Any):
    config = t.WhisperConfig(
        vocab_size=_VOCAB, num_mel_bins=8, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=8, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1, suppress_tokens=None, begin_suppress_tokens=None, attn_implementation="eager",
    )  # fmt: skip

    def batch_inputs(batch: int):
        rng = _rng(batch)
        inputs = {
            # (batch, num_mel_bins, 2 * max_source_positions), as in torch: the encoder transposes itself
            "input_features": rng.normal(size=(batch, 8, 16)).astype(np.float32),
            "decoder_input_ids": _ids(rng, batch, _DECODER_SEQ),
            "decoder_attention_mask": np.ones((batch, _DECODER_SEQ), np.int32),
            "decoder_position_ids": _positions(batch, _DECODER_SEQ),
            "deterministic": True,
        }
        return inputs, _to_torch(inputs)

    return config, t.FlaxWhisperModel, t.WhisperModel, batch_inputs, "last_hidden_state", {}


_SPECS: dict[str, Callable[[Any], tuple]] = {
    "gpt2": _spec_gpt2, "llama": _spec_llama, "t5": _spec_t5, "vit": _spec_vit, "resnet": _spec_resnet,
    "clip_vision": _spec_clip_vision, "clip_text": _spec_clip_text, "wav2vec2": _spec_wav2vec2, "bart": _spec_bart,
    "distilbert": _spec_distilbert, "opt": _spec_opt, "whisper": _spec_whisper,
}  # fmt: skip
assert tuple(_SPECS) == ARCHITECTURES


def hf_flax_state(variables: dict[str, Any]) -> dict[str, Any]:
    """What HF's converter takes: the params tree, or the whole variables when there are batch_stats."""
    return variables if "batch_stats" in variables else variables["params"]


def build(name: str, batch: int = 2) -> ZooCase:
    if name not in _SPECS:
        raise KeyError(f"unknown architecture {name!r}; one of {ARCHITECTURES}")
    import torch
    import transformers
    from transformers.modeling_flax_pytorch_utils import load_flax_weights_in_pytorch_model
    from transformers.utils import logging as hf_logging

    patch_jnp_clip_for_transformers_t5()
    config, flax_cls, torch_cls, batch_inputs, output_key, init_kwargs = _SPECS[name](transformers)
    flax_model = flax_cls(config, seed=0, **init_kwargs)
    raw = flax_model.params
    variables = perturb(dict(raw) if "batch_stats" in raw else {"params": raw})

    def make_torch() -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = torch_cls(config)
        return model.float().eval()

    def make_reference() -> torch.nn.Module:
        model = make_torch()
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its "All the weights ... were initialized" warnings
        try:
            with warnings.catch_warnings():  # torch.from_numpy of read-only jax buffers (it copies them after)
                warnings.simplefilter("ignore", UserWarning)
                load_flax_weights_in_pytorch_model(model, dict(hf_flax_state(variables)))
        finally:
            hf_logging.set_verbosity(verbosity)
        return model.eval()

    inputs, torch_inputs = batch_inputs(batch)
    return ZooCase(
        name=name, flax_module=flax_model.module, variables=variables, inputs=inputs, torch_inputs=torch_inputs,
        make_torch=make_torch, make_reference=make_reference, output_key=output_key, batch_inputs=batch_inputs,
        config=config, flax_model=flax_model,
    )  # fmt: skip
