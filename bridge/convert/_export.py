"""A converted module as plain torch code: one standalone ``.py`` (imports torch alone) and its weights
in a ``.safetensors``. Loading and running them needs neither JAX, Flax nor this package.

The source holds one class named after the Flax model: ``__init__`` builds the module tree of the
converted ``GraphModule`` (torch layers by their constructor, as ``torch.fx``'s ``to_folder`` does, the
bridge's own layers with their source copied in) on the meta device, ``forward`` is the GraphModule's
code, and ``from_safetensors`` loads the weights into it, dtypes as saved. A manifest beside them records
their SHA-256: ``--force`` replaces only a folder that is an export, unchanged since.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import keyword
import unicodedata
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors.torch import save_file
from torch import fx

from .._errors import UnsupportedModelError
from .._manifest import unchanged_output, write_manifest
from ..rules import torch_layers

SOURCE = "model.py"
WEIGHTS = "weights.safetensors"
# marks a folder as an export, with the SHA-256 of what was written: only such a folder, unchanged, is replaced
MANIFEST = "flax2torch-export.json"
MANIFEST_FORMAT = "flax2torch-export/1"


def export_source(module: fx.GraphModule, class_name: str) -> str:
    """The standalone Python source of ``module`` as a class ``class_name``.

    Raises:
        UnsupportedModelError: for a submodule that is neither a torch layer nor one of the bridge's.
    """
    class_name = export_class_name(class_name)
    own_layers = False
    lines = [
        f"class {class_name}(torch.nn.Module):",
        f'    """{class_name}, converted from Flax by flax-torch-bridge."""',
        "",
    ]
    lines += [
        "    def __init__(self, device: str | torch.device | None = None) -> None:",
        '        """Built as torch layers are: parameters allocated, uninitialised, on ``device`` (torch\'s default',
        '        when None); ``from_safetensors`` builds it on the meta device and takes the file\'s tensors."""',
        "        super().__init__()",
        "        with contextlib.nullcontext() if device is None else torch.device(device):",
        "            pass",
    ]
    for name, child in module.named_modules():
        plain = type(child) is torch.nn.Module or isinstance(child, fx.GraphModule)
        if name:
            if plain:
                constructor = "torch.nn.Module()"
            else:
                constructor, own = _constructor(child, name)
                own_layers |= own
            lines.append(f"            {_assign(name, constructor)}")
        if plain:  # the containers hold the parameters and buffers used between layers
            owner = _reference(name)
            for leaf, parameter in child.named_parameters(recurse=False):
                lines.append(
                    f"            {owner}.register_parameter({leaf!r}, torch.nn.Parameter({_empty(parameter)}))"
                )
            for leaf, buffer in child.named_buffers(recurse=False):
                lines.append(f"            {owner}.register_buffer({leaf!r}, {_empty(buffer)})")
    lines += ["", *("    " + line for line in module.code.strip("\n").splitlines()), ""]
    lines += [
        "    @classmethod",
        f'    def from_safetensors(cls, path: str | os.PathLike[str] | None = None) -> "{class_name}":',
        f'        """The model with its weights (``path``; by default ``{WEIGHTS}`` beside this file), in',
        '        inference mode."""',
        "        from safetensors.torch import load_file",
        "",
        "        if path is None:",
        f'            path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "{WEIGHTS}")',
        '        model = cls(device="meta")',
        "        model.load_state_dict(load_file(path), assign=True)",
        "        return model.eval()",
    ]
    header = [
        f'"""{class_name}: a PyTorch module converted from Flax by flax-torch-bridge (plain torch, no JAX).',
        "",
        f"    model = {class_name}.from_safetensors()  # the {WEIGHTS} beside this file",
        f"    model = {class_name}(); model.load_state_dict(safetensors.torch.load_file(path))  # the same",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "import contextlib",
        "import math  # noqa: F401  (the generated code may use math.inf)",
        "import os",
        "from math import inf, nan  # noqa: F401",
        "",
        "import torch",
        "",
    ]
    library = [_layer_source(), ""] if own_layers else []
    return "\n".join([*header, *library, "", *lines, ""])


def write_export(module: fx.GraphModule, class_name: str, folder: Path) -> tuple[Path, Path]:
    """Write ``model.py``, ``weights.safetensors`` and the manifest that marks the folder as an export (the
    files' SHA-256) into ``folder`` (which must exist): ``(source, weights)``."""
    source = folder / SOURCE
    source.write_text(export_source(module, class_name))
    weights = folder / WEIGHTS
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(weights), metadata={"format": "pt"})
    write_manifest(folder, MANIFEST, MANIFEST_FORMAT)
    return source, weights


def unchanged_export(folder: Path) -> str | None:
    """None when ``folder`` is an export as ``write_export`` left it (its files and nothing else, each with the
    hash its manifest records); else why not, so that ``--force`` never replaces anything else."""
    return unchanged_output(folder, MANIFEST, MANIFEST_FORMAT)


def load_export(source: Path, weights: Path, class_name: str) -> torch.nn.Module:
    """Import an exported source file on its own and load its weights (how the checker verifies an export)."""
    namespace = ModuleType("flax2torch_export")
    namespace.__file__ = str(source)
    exec(compile(source.read_text(), str(source), "exec"), namespace.__dict__)
    exported: Any = getattr(namespace, export_class_name(class_name))
    return exported.from_safetensors(str(weights))  # type: ignore[no-any-return]


def export_class_name(name: str) -> str:
    """The class name an export writes for a Flax model's class name: the name as Python reads it (NFKC), with
    ``_`` added where it would hide a name the file uses (``torch``, ``math``, a builtin, a layer class copied
    in); ``ConvertedModel`` when it is no Python name at all."""
    name = unicodedata.normalize("NFKC", name)
    if not _is_name(name):
        return "ConvertedModel"
    while name in _FILE_NAMES:
        name += "_"
    return name


# Names an exported file defines or uses at module level: its imports, the layers copied in, and builtins.
_FILE_NAMES = (
    frozenset({"annotations", "contextlib", "math", "inf", "nan", "os", "torch", "safetensors"})
    | frozenset(vars(torch_layers))
    | frozenset(dir(builtins))
)


def _constructor(child: torch.nn.Module, name: str) -> tuple[str, bool]:
    """``(source that constructs a module like child, whether it is one of the bridge's own layers)``."""
    kind = type(child)
    if kind.__module__.startswith("torch.nn"):
        return _literal_call(f"torch.nn.{kind.__name__}", child.extra_repr(), name), False
    if kind.__module__ == torch_layers.__name__:
        return _literal_call(kind.__name__, child.extra_repr(), name), True
    raise UnsupportedModelError(
        f"{name} is a {kind.__module__}.{kind.__name__}: export writes torch layers and the bridge's own only"
    )


def _literal_call(function: str, arguments: str, name: str) -> str:
    """``function(arguments)``, once every argument is known to be a literal (numbers, strings, booleans, None
    and tuples of them) under a plain keyword: a layer's options come from the user's model, and generated code
    runs on every import, so anything else (a value whose repr is code) is refused, never written."""
    source = f"{function}({arguments})"
    try:
        call = ast.parse(source, mode="eval").body
    except SyntaxError:
        call = None
    if (
        not isinstance(call, ast.Call)
        or not all(_is_literal(node) for node in (*call.args, *(k.value for k in call.keywords)))
        or any(k.arg is None for k in call.keywords)
    ):
        raise UnsupportedModelError(f"{name}: its options {arguments[:80]!r} are not plain literals; not exported")
    return source


def _is_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int | float | str | bool) or node.value is None
    if isinstance(node, ast.Tuple | ast.List):
        return all(_is_literal(e) for e in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return _is_literal(node.operand)
    return False


def _reference(name: str) -> str:
    """Source for the submodule at a dotted path: ``self.Block_0.Dense_1``, or ``self.get_submodule("blocks.0")``
    where a part is not an identifier (NNX list indices)."""
    if not name:
        return "self"
    parts = name.split(".")
    if all(_is_name(p) for p in parts):
        return "self." + name
    return f"self.get_submodule({name!r})"


def _is_name(text: str) -> bool:
    return text.isidentifier() and not keyword.iskeyword(text)


def _assign(name: str, constructor: str) -> str:
    parent, _, leaf = name.rpartition(".")
    if _is_name(leaf):
        return f"{_reference(parent)}.{leaf} = {constructor}"
    return f"{_reference(parent)}.add_module({leaf!r}, {constructor})"


def _empty(tensor: torch.Tensor) -> str:
    return f"torch.empty({tuple(tensor.shape)}, dtype={tensor.dtype})"


def _layer_source() -> str:
    """The bridge's torch layers (pure torch), copied into the export without their module docstring."""
    source = inspect.getsource(torch_layers)
    return source.split('"""', 2)[2].replace("from __future__ import annotations\n", "").strip("\n")
