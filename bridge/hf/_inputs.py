"""Example inputs for checking a Hugging Face pair: the Flax module's arguments, built by name from the config.

Ids are drawn from the vocabulary but its special tokens (torch's ``padding_idx`` row gets no gradient, Flax's
does), the second row's encoder mask pads its last two tokens (so the check covers the mask; a decoder's mask
is all ones), positions count up, images are NHWC for Flax and NCHW for torch; Flax-only switches
(``deterministic``) are Flax's alone, and torch gets only the arguments its ``forward`` takes. An argument
the module requires and this table does not know is refused by name: the check needs inputs it can trust.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._errors import UnsupportedModelError

BATCH, TOKENS = 2, 8
_OPTIONAL = {"head_mask", "encoder_hidden_states", "encoder_attention_mask", "encoder_outputs", "past_key_values"}
_FLAX_ONLY = {"deterministic": True, "train": False, "init_cache": False}


def example_inputs(
    flax_module: Any, torch_model: torch.nn.Module, config: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(flax keyword inputs, torch keyword inputs)`` holding the same data.

    Raises:
        UnsupportedModelError: the Flax module requires an argument no builder here knows.
    """
    rng = np.random.default_rng(0)
    flax_inputs: dict[str, Any] = {}
    takes = inspect.signature(torch_model.forward).parameters
    torch_inputs: dict[str, Any] = {}
    for name, parameter in list(inspect.signature(flax_module.__call__).parameters.items()):
        if name in _FLAX_ONLY:
            flax_inputs[name] = _FLAX_ONLY[name]
            continue
        build = _BUILDERS.get(name)
        if build is None:
            if parameter.default is inspect.Parameter.empty and name not in _OPTIONAL:
                raise UnsupportedModelError(
                    f"{type(flax_module).__name__} needs an input {name!r} that the check cannot make up; "
                    "convert with --no-check and compare the models on inputs of your own"
                )
            if parameter.default is inspect.Parameter.empty:
                flax_inputs[name] = None
            continue
        flax_value, torch_value = build(rng, config)
        flax_inputs[name] = flax_value
        if name in takes:
            torch_inputs[name] = torch_value
    return flax_inputs, torch_inputs


def _vocabulary(config: Any) -> int:
    size = getattr(config, "vocab_size", None) or getattr(getattr(config, "text_config", None), "vocab_size", None)
    return int(size or 2)


def _ints(values: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """Integer inputs as each framework takes them: int32 for Flax, int64 for torch."""
    return values.astype(np.int32), torch.from_numpy(values.astype(np.int64))


def _ids(rng: np.random.Generator, config: Any) -> tuple[np.ndarray, torch.Tensor]:
    names = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")
    special = {getattr(config, name, None) for name in names}
    ordinary = [i for i in range(_vocabulary(config)) if i not in special] or [0]
    return _ints(rng.choice(ordinary, size=(BATCH, TOKENS)))


def _mask(rng: np.random.Generator, config: Any) -> tuple[np.ndarray, torch.Tensor]:
    mask = np.ones((BATCH, TOKENS), np.int32)
    mask[1, -2:] = 0
    return _ints(mask)


def _zeros(rng: np.random.Generator, config: Any) -> tuple[np.ndarray, torch.Tensor]:
    return _ints(np.zeros((BATCH, TOKENS)))


def _positions(rng: np.random.Generator, config: Any) -> tuple[np.ndarray, torch.Tensor]:
    return _ints(np.broadcast_to(np.arange(TOKENS), (BATCH, TOKENS)))


def _pixels(rng: np.random.Generator, config: Any) -> tuple[np.ndarray, torch.Tensor]:
    vision = getattr(config, "vision_config", config)
    size, channels = int(getattr(vision, "image_size", 32)), int(getattr(vision, "num_channels", 3))
    images = rng.standard_normal((BATCH, size, size, channels)).astype(np.float32)
    return images, torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _features(rng: np.random.Generator, config: Any) -> tuple[np.ndarray, torch.Tensor]:
    """Whisper's log-mel features, (batch, mel bins, 2 * source positions) in both frameworks."""
    shape = (BATCH, int(config.num_mel_bins), 2 * int(config.max_source_positions))
    features = rng.standard_normal(shape).astype(np.float32)
    return features, torch.from_numpy(features.copy())


def _ones(rng: np.random.Generator, config: Any) -> tuple[np.ndarray, torch.Tensor]:
    return _ints(np.ones((BATCH, TOKENS)))


def _audio(rng: np.random.Generator, config: Any) -> tuple[np.ndarray, torch.Tensor]:
    values = rng.standard_normal((BATCH, 1600)).astype(np.float32)
    return values, torch.from_numpy(values.copy())


_BUILDERS: dict[str, Callable[[np.random.Generator, Any], tuple[np.ndarray, torch.Tensor]]] = {
    "input_ids": _ids,
    "decoder_input_ids": _ids,
    "attention_mask": _mask,
    "decoder_attention_mask": _ones,
    "token_type_ids": _zeros,
    "position_ids": _positions,
    "decoder_position_ids": _positions,
    "pixel_values": _pixels,
    "input_values": _audio,
    "input_features": _features,
}
