"""A Hugging Face Flax checkpoint folder into the PyTorch folder transformers loads, proven equivalent.

The plan (``_plan``) places every tensor before anything is read. Then each Flax shard becomes one safetensors
shard (``model-0000k-of-0000n.safetensors`` with ``model.safetensors.index.json``, or ``model.safetensors``),
read one tensor at a time and written with ``{"format": "pt"}``: at most the shard's converted tensors and
safetensors' copy of them are in memory. The folder is staged: transformers' PyTorch class loads it there (no
missing, unexpected or mismatched key allowed) and the bridge's checker compares it with the Flax model;
only then does the destination appear. A manifest of hashes marks it, so ``force`` replaces only such a
folder, unchanged.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import torch
from safetensors.torch import save_file

from .. import _progress as progress
from .._errors import (
    CheckpointError,
    InvalidArgumentError,
    NotEquivalentError,
    OutputRefusedError,
    UnsupportedModelError,
    first_line,
)
from .._manifest import unchanged_output, write_manifest
from .._tensors import shared_tensor
from ..check import EquivalenceReport, check_equivalence
from ..io import atomic_output, check_tensor
from ._checkpoint import CONFIG, INDEX, WEIGHTS, FlaxCheckpoint, leaves, open_checkpoint
from ._inputs import example_inputs
from ._plan import ConversionPlan, flax_layout, permuted, plan_conversion

MANIFEST = "flax2torch-convert-hf.json"
MANIFEST_FORMAT = "flax2torch-convert-hf/1"
TORCH_INDEX = "model.safetensors.index.json"
_SIDE_SUFFIXES = {".json", ".txt", ".model", ".md", ".jinja", ".tiktoken", ".vocab", ".spm", ".bpe"}


@dataclass(frozen=True)
class HFConversion:
    """What ``convert_hf_checkpoint`` wrote and found."""

    destination: Path
    architecture: str  # the PyTorch class, e.g. "BertForMaskedLM"
    shards: tuple[str, ...]
    tensors: int
    total_bytes: int
    tied: dict[str, str]  # torch keys left to transformers' weight tying -> the written key they share
    by_name: tuple[str, ...]  # Flax keys placed by naming convention (no rule), confirmed by the check
    report: EquivalenceReport | None  # None with check=False


def convert_hf_checkpoint(
    source: str | Path,
    destination: str | Path,
    *,
    check: bool = True,
    force: bool = False,
    architecture: str | None = None,
    strict: bool = False,
) -> HFConversion:
    """Convert the Flax checkpoint folder ``source`` into a PyTorch folder ``destination``.

    Arguments:
        check: load the written folder with transformers' PyTorch class and compare it with the Flax model
            on example inputs; the destination appears only when they are equivalent.
        architecture: the PyTorch class name (``"BertForMaskedLM"``) when ``config.json`` names none.
        strict: refuse NaN/Inf weights instead of warning.

    Progress (a line per phase and per shard) goes to ``bridge.show_progress``'s sink, if one listens.

    Raises:
        CheckpointError: a damaged or hostile folder, or one that disagrees with its config.
        UnsupportedModelError: a tensor with no place in the PyTorch class (named), or inputs the check cannot make.
        NotEquivalentError: the check failed (``.report`` says where); nothing was written.
        OutputExistsError / OutputRefusedError: the destination exists (without ``force``, or is not an earlier
            conversion, unchanged).
    """
    checkpoint = open_checkpoint(source)
    transformers = _transformers()
    with _quiet(transformers):
        return _convert(transformers, checkpoint, Path(destination), check, force, architecture, strict)


def _convert(
    transformers: Any,
    checkpoint: FlaxCheckpoint,
    destination: Path,
    check: bool,
    force: bool,
    architecture: str | None,
    strict: bool,
) -> HFConversion:
    config = _config(transformers, checkpoint.folder)
    name = _architecture(config, architecture, checkpoint.folder)
    flax_class, torch_class = _classes(transformers, name)
    progress.step(f"planning {name}: {len(checkpoint.shards)} shard(s), {checkpoint.size / 2**20:.1f} MiB")
    try:
        layers, expected, keyed = flax_layout(flax_class(config, _do_init=False))
    except Exception as e:  # transformers' own Flax code, under a jax it may predate (T5's jnp.clip(a_max=))
        raise UnsupportedModelError(
            f"transformers' Flax{name} cannot be traced with jax {jax.__version__}: {type(e).__name__}: "
            f"{first_line(e)[:200]}; the bridge needs the Flax class to run (try the jax its transformers supports)"
        ) from None
    with torch.device("meta"):
        plan = plan_conversion(layers, expected, keyed, torch_class(config))
    if checkpoint.index is not None and set(checkpoint.index) != set(expected):
        _refuse_keys(checkpoint.folder / INDEX, set(checkpoint.index), set(expected), name)
    with atomic_output(
        destination, force=force, directory=True, may_replace=_earlier_conversion, protect=[checkpoint.folder]
    ) as staging:
        staging.mkdir()
        shards, total = _write_shards(checkpoint, plan, expected, staging, strict)
        _copy_side_files(checkpoint.folder, staging)
        report = _check(transformers, flax_class, torch_class, checkpoint.folder, staging, keyed) if check else None
        write_manifest(staging, MANIFEST, MANIFEST_FORMAT)
    return HFConversion(destination, name, shards, len(plan.tensors), total, plan.tied, tuple(plan.by_name()), report)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise InvalidArgumentError(
            "converting a Hugging Face checkpoint needs transformers 4.57.x (the last line with Flax): "
            'pip install "transformers>=4.57,<5"'
        ) from None
    if not hasattr(transformers, "FlaxPreTrainedModel"):
        raise InvalidArgumentError(
            f"transformers {transformers.__version__} has no Flax models (v5 removed them): "
            'pip install "transformers>=4.57,<5"'
        )
    return transformers


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """transformers' own chatter (deprecation notes, loading bars, attention fallbacks) off, restored after:
    the bridge says what happened in its own lines."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the deprecation of its Flax classes
            yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _config(transformers: Any, folder: Path) -> Any:
    try:
        return transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"{folder / CONFIG}: transformers cannot read it ({str(e).splitlines()[0][:200]})"
        ) from None


def _architecture(config: Any, given: str | None, folder: Path) -> str:
    named = list(getattr(config, "architectures", None) or [])
    name = given or (named[0] if named else None)
    if not name:
        raise InvalidArgumentError(f"{folder / CONFIG} names no architecture; give one (e.g. --architecture BertModel)")
    return str(name).removeprefix("Flax")


def _classes(transformers: Any, name: str) -> tuple[Any, Any]:
    flax_class = getattr(transformers, f"Flax{name}", None)
    torch_class = getattr(transformers, name, None)
    if flax_class is None or torch_class is None:
        missing = f"Flax{name}" if flax_class is None else name
        raise UnsupportedModelError(
            f"transformers {transformers.__version__} has no {missing}; give the architecture the checkpoint holds "
            "(e.g. --architecture BertModel)"
        )
    return flax_class, torch_class


def _refuse_keys(index: Path, listed: set[str], expected: set[str], name: str) -> None:
    extra, missing = sorted(listed - expected), sorted(expected - listed)
    parts = [f"lists {len(extra)} tensors Flax{name} does not have (first {extra[0]})"] if extra else []
    parts += [f"lacks {len(missing)} that it has (first {missing[0]})"] if missing else []
    raise CheckpointError(f"{index}: {' and '.join(parts)}; is the config the checkpoint's own?")


def _write_shards(
    checkpoint: FlaxCheckpoint,
    plan: ConversionPlan,
    expected: dict[str, Any],
    staging: Path,
    strict: bool,
) -> tuple[tuple[str, ...], int]:
    """One safetensors shard per Flax shard, tensor by tensor; the index when there are several."""
    count = len(checkpoint.shards)
    names = (
        ("model.safetensors",)
        if count == 1
        else tuple(f"model-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1))
    )
    weight_map: dict[str, str] = {}
    seen: set[str] = set()
    total = 0
    for k, (shard, name) in enumerate(zip(checkpoint.shards, names, strict=True)):
        progress.step(f"shard {k + 1}/{count}: {shard.name} -> {name}")
        tensors: dict[str, torch.Tensor] = {}
        for path, array in leaves(shard):
            key = "/".join(path)
            placed = plan.tensors.get(key)
            if placed is None or key in seen:
                why = "a second time" if key in seen else "which the model does not have"
                raise CheckpointError(f"{shard}: holds {key} {why}")
            if checkpoint.index is not None and checkpoint.index.get(key) != shard.name:
                raise CheckpointError(f"{shard}: holds {key}, which its index puts in {checkpoint.index.get(key)}")
            if tuple(array.shape) != tuple(expected[key].shape):
                raise CheckpointError(
                    f"{shard}: {key} has shape {tuple(array.shape)}, the config gives {tuple(expected[key].shape)}"
                )
            check_tensor(shard, key, array, strict=strict)
            seen.add(key)
            tensors[placed.torch_key] = shared_tensor(permuted(array, placed.axes), key)  # a new array: shared
            del array
        if k == count - 1:
            tensors.update({key: torch.zeros(shape, dtype=dtype) for key, (shape, dtype) in plan.zeros.items()})
        save_file(tensors, str(staging / name), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    missing = sorted(set(plan.tensors) - seen)
    if missing:
        raise CheckpointError(f"{checkpoint.folder}: lacks {len(missing)} tensors of the model (first {missing[0]})")
    if count > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (staging / TORCH_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return names, total


def _copy_side_files(source: Path, staging: Path) -> None:
    """The config and tokenizer files beside the weights (no weights of any framework, no code)."""
    for entry in sorted(source.iterdir()):
        skip = entry.name.startswith((WEIGHTS.removesuffix(".msgpack"), ".")) or entry.name in {INDEX, MANIFEST}
        if skip or entry.suffix not in _SIDE_SUFFIXES or not entry.is_file():
            continue
        shutil.copyfile(entry, staging / entry.name)  # a link (Hugging Face's cache) is copied as its content


def _check(
    transformers: Any, flax_class: Any, torch_class: Any, source: Path, staging: Path, keyed: bool
) -> EquivalenceReport:
    """Load both folders with transformers and compare the models on example inputs."""
    progress.step("checking: loading both models")
    flax_model = flax_class.from_pretrained(str(source), local_files_only=True)
    loaded, info = torch_class.from_pretrained(str(staging), local_files_only=True, output_loading_info=True)
    wrong = {k: v for k, v in info.items() if v}
    if wrong:
        raise CheckpointError(
            f"{staging}: transformers' {torch_class.__name__} reports {wrong} (a bug of the bridge: report it)"
        )
    port = loaded.eval().float()
    variables = flax_model.params if keyed else {"params": flax_model.params}
    inputs, torch_inputs = example_inputs(flax_model.module, port, flax_model.config)
    progress.step("checking: comparing every call")
    report = check_equivalence(flax_model.module, variables, port, inputs, torch_inputs=torch_inputs)
    if not report.ok:
        raise NotEquivalentError(
            f"the converted {torch_class.__name__} is not equivalent; nothing was written:\n{report}", report
        )
    return report


def _earlier_conversion(path: Path) -> None:
    reason = unchanged_output(path, MANIFEST, MANIFEST_FORMAT)
    if reason is not None:
        raise OutputRefusedError(
            f"{path}: not a folder convert-hf wrote, unchanged ({reason}); not replaced: remove it yourself or "
            "name another destination"
        )
