"""Hugging Face checkpoints: a Flax checkpoint folder (``flax_model.msgpack``, sharded or not) converted into
the PyTorch folder (``model.safetensors``, sharded with its index) that transformers' PyTorch class loads,
checked against the Flax model before it appears. Needs transformers 4.57.x (the last line with Flax)."""

from ._convert import HFConversion as HFConversion
from ._convert import convert_hf_checkpoint as convert_hf_checkpoint
