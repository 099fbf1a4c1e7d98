"""Build a native torch module from a traced Flax model: a ``torch.fx.GraphModule`` whose submodules
mirror the Flax scopes (``Block_0.Dense_1`` is a ``torch.nn.Linear``) and whose graph is the jaxpr,
translated primitive by primitive (``bridge.convert._primitives.TABLE``).

Like ``torch.fx.Interpreter``, one walk over the equations: a rule-backed layer becomes ``call_module``,
a call that carries a sub-jaxpr (``jit``, ``custom_jvp_call``, ``remat``) is inlined (relu is recognised
and becomes ``torch.relu``), every other primitive goes through the table. Flax variables used between
layers become parameters (``params``) or buffers (other collections) at their Flax path; a variable that
a layer owns (a tied embedding read by ``Embed.attend``) is read from that layer's tensor.
"""

from __future__ import annotations

import keyword
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.extend.core as jex
import numpy as np
import torch
from torch import fx

from .._arguments import INPUT_NAMES
from .._errors import UnsupportedModelError
from .._jaxpr import is_relu, sub_jaxpr
from .._tensors import is_float, to_tensor, torch_dtype
from ._jaxpr_trace import LAYER_PREFIX, SCOPE_PREFIX, Trace, TracedLayer
from ._primitives import TABLE, Emitter


@dataclass
class _Variable:
    """A Flax variable leaf, turned into a graph node on first use between layers."""

    path: tuple[str, ...]  # (collection, *module path, name)
    value: Any


def build_graph_module(trace: Trace, class_name: str, twin: Trace | None = None) -> fx.GraphModule:
    """The GraphModule computing ``trace``'s function: inputs ``trace.input_names``, output as Flax's.
    ``twin``: the same model traced at another batch size; the axes whose sizes differ between the two
    are left free (``-1``) in the reshapes, so the module takes any batch size."""
    return _Builder(trace, batch_axes(trace.jaxpr, twin.jaxpr) if twin is not None else {}).build(class_name)


class ConvertedModule(fx.GraphModule):
    """A GraphModule called as any ``torch.nn.Module`` is: an error in its forward propagates with its
    ordinary traceback (the generated lines are in ``linecache``), where ``fx.GraphModule`` prints its own
    block to stderr and strips the traceback, before the CLI's one line."""

    def recompile(self) -> Any:
        code = super().recompile()
        type(self).__call__ = _module_call  # type: ignore[method-assign]
        return code


def _module_call(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    # looked up at each call, so a tracer that patches ``Module.__call__`` still sees this module
    return torch.nn.Module.__call__(self, *args, **kwargs)


def batch_axes(first: Any, second: Any) -> dict[int, tuple[int, ...]]:
    """For each variable of jaxpr ``first`` (by id), the axes whose size differs in ``second``, the same
    program traced at another batch size; empty when the two programs differ in structure."""
    found: dict[int, tuple[int, ...]] = {}

    def walk(a: Any, b: Any) -> bool:
        a, b = getattr(a, "jaxpr", a), getattr(b, "jaxpr", b)
        if len(a.eqns) != len(b.eqns) or len(a.invars) != len(b.invars):
            return False
        for x, y in zip([*a.invars, *a.outvars], [*b.invars, *b.outvars], strict=True):
            note(x, y)
        for e, f in zip(a.eqns, b.eqns, strict=True):
            if e.primitive.name != f.primitive.name or len(e.outvars) != len(f.outvars):
                return False
            for x, y in zip(e.outvars, f.outvars, strict=True):
                note(x, y)
            for key, value in e.params.items():
                if hasattr(getattr(value, "jaxpr", value), "eqns") and not walk(value, f.params[key]):
                    return False
        return True

    def note(x: Any, y: Any) -> None:
        shape_x, shape_y = getattr(x.aval, "shape", ()), getattr(y.aval, "shape", ())
        if len(shape_x) == len(shape_y):
            found[id(x)] = tuple(d for d, (m, n) in enumerate(zip(shape_x, shape_y, strict=True)) if m != n)

    return found if walk(first, second) else {}


class _Builder:
    def __init__(self, trace: Trace, batch_dims: dict[int, tuple[int, ...]]) -> None:
        self.trace = trace
        self.graph = fx.Graph()
        self.emit = Emitter(self.graph, batch_dims)
        self.root = torch.nn.Module()
        self.nodes: dict[int, fx.Node] = {}  # id(_Variable) -> its get_attr node
        self.owned: dict[tuple[str, ...], tuple[str, tuple[int, ...] | None]] = {}
        self.layer_targets: dict[str, str] = {}  # Flax path -> module target, for layers built once
        self.names = TorchNames()

    def build(self, class_name: str) -> fx.GraphModule:
        for layer in self.trace.layers.values():
            self._install_layer(layer)
        closed = self.trace.jaxpr
        n = len(self.trace.variable_paths)
        inputs: list[Any] = [
            _Variable(path, value)
            for path, value in zip(self.trace.variable_paths, self.trace.variable_values, strict=True)
        ]
        names = self.trace.input_names
        taken = {name for name in names if _identifier(name, set()) == name}  # Python names keep their own
        placeholders = [self.graph.placeholder(name if name in taken else _identifier(name, taken)) for name in names]
        inputs += placeholders
        self.emit.template = placeholders[0] if placeholders else None
        for var, node in zip(closed.jaxpr.invars[n:], placeholders, strict=True):
            if 0 in self.emit.batch_dims.get(id(var), ()):
                self.emit.batch_input = (node, int(var.aval.shape[0]))
                break
        assert len(inputs) == n + len(self.trace.input_names)
        outputs = self._inline(closed.jaxpr, list(closed.consts), inputs, "")
        resolved = [self._node(value) for value in outputs]
        self.graph.output(_structure(self.trace.output_tree, resolved))
        self.graph.lint()
        module = ConvertedModule(self.root, self.graph, class_name=class_name)
        # an input whose name is no Python name (``my-input``) is a parameter of another name (``my_input``)
        given = zip(self.trace.input_names, placeholders, strict=True)
        module.meta[INPUT_NAMES] = {name: str(placeholder.target) for name, placeholder in given}
        return module.eval()

    # --- layers and variables ------------------------------------------------------------------

    def _install_layer(self, layer: TracedLayer) -> None:
        if layer.path in self.layer_targets:
            return
        target = self.names.target(layer.path.split("/"))
        _install(self.root, target, layer.torch_module)
        self.layer_targets[layer.path] = target
        for m in layer.rule.param_maps(layer.module, layer.variables):
            flax_path = (m.collection, *layer.path.split("/"), m.flax_name)
            self.owned[flax_path] = (f"{target}.{m.torch_name}", m.to_torch_axes)

    def _node(self, value: Any) -> Any:
        """An fx node (or scalar) for an environment value: variables become ``get_attr`` on first use."""
        if isinstance(value, _Variable):
            node = self.nodes.get(id(value))
            if node is None:
                node = self.nodes[id(value)] = self._variable_node(value)
            return node
        if isinstance(value, np.ndarray | jax.Array) and not isinstance(value, jax.core.Tracer):
            return self._constant(value)
        return value

    def _variable_node(self, variable: _Variable) -> fx.Node:
        owned = self.owned.get(variable.path)
        if owned is not None:  # held by a layer's torch module, in torch's layout: read it back in Flax's
            target, axes = owned
            node = self.graph.get_attr(target)
            return node if axes is None else self.emit.method("permute", node, tuple(int(a) for a in np.argsort(axes)))
        collection, *path = variable.path
        target = self.names.target(path)
        tensor = to_tensor(np.asarray(variable.value))
        if collection == "params":
            _install(self.root, target, torch.nn.Parameter(tensor, requires_grad=tensor.is_floating_point()))
        else:
            _install(self.root, target, tensor, buffer=True)
        return self.graph.get_attr(target)

    def _constant(self, value: Any) -> Any:
        array = np.asarray(value)
        if array.shape == ():
            return array.item()
        target = self.names.fresh("_constant")
        self.root.register_buffer(target, to_tensor(array))
        return self.graph.get_attr(target)

    # --- equations ------------------------------------------------------------------------------

    def _inline(self, jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], scope: str) -> list[Any]:
        env: dict[Any, Any] = {}
        for var, value in zip(jaxpr.constvars, consts, strict=True):
            env[var] = value
        for var, value in zip(jaxpr.invars, args, strict=True):
            env[var] = value

        def read(atom: Any) -> Any:
            if isinstance(atom, jex.Literal):
                value = np.asarray(atom.val, dtype=getattr(atom.aval, "dtype", None))
                return value.item() if value.shape == () else value
            return env[atom]

        for eqn in jaxpr.eqns:
            where = _flax_path(eqn) or scope
            values = [read(v) for v in eqn.invars]
            outputs = self._equation(eqn, values, where)
            for var, value in zip(eqn.outvars, outputs, strict=True):
                if not isinstance(var, jex.DropVar):
                    env[var] = value
        return [read(v) for v in jaxpr.outvars]

    def _equation(self, eqn: Any, values: list[Any], where: str) -> list[Any]:
        name = eqn.primitive.name
        layer_name = str(eqn.params.get("name", ""))
        if name in ("jit", "pjit") and layer_name.startswith(LAYER_PREFIX):
            return [self._layer_call(eqn, values)]
        if name == "custom_jvp_call" and is_relu(eqn.params["call_jaxpr"]):
            return [self.emit.call(torch.relu, self._node(values[0]))]
        inner = sub_jaxpr(eqn)
        if inner is not None:
            jaxpr, consts = inner
            count = len(jaxpr.invars)
            return self._inline(jaxpr, consts, values[len(values) - count :], where)
        translate = TABLE.get(name)
        if translate is None:
            raise UnsupportedModelError(
                f"the JAX primitive {name!r}{_at(where)} has no torch translation; supported: "
                f"{', '.join(sorted(TABLE))}. Give that module a rule (@bridge.register_rule) or rewrite it"
            )
        nodes = [self._node(v) for v in values]
        try:
            result = translate(self.emit, eqn, nodes)
        except NotImplementedError as e:
            raise UnsupportedModelError(
                f"the JAX primitive {name!r}{_at(where)} is not translated in this form: {e}"
            ) from e
        return result if isinstance(result, list) else [result]

    def _layer_call(self, eqn: Any, values: list[Any]) -> fx.Node:
        layer = self.trace.layers[str(eqn.params["name"])]
        target = self.layer_targets[layer.path]
        (data,) = values[layer.n_variables :]
        (data_var,) = eqn.invars[layer.n_variables :]
        x = self._node(data)
        module = self.root.get_submodule(target)
        shape, out_aval = tuple(data_var.aval.shape), eqn.outvars[0].aval
        tensor = next(iter(module.parameters()), None)
        if tensor is not None and is_float(out_aval.dtype) and torch_dtype(out_aval.dtype) != tensor.dtype:
            # mixed precision (``dtype=bfloat16`` over float32 parameters): Flax computes with the weights
            # cast to the layer's dtype, so the torch layer holds them in it
            module.to(torch_dtype(out_aval.dtype))
            tensor = next(iter(module.parameters()))
        if tensor is not None and is_float(data_var.aval.dtype) and torch_dtype(data_var.aval.dtype) != tensor.dtype:
            x = self.emit.method("to", x, tensor.dtype)
        elif tensor is not None and not is_float(data_var.aval.dtype) and not isinstance(module, _TAKES_INDICES):
            x = self.emit.method("to", x, tensor.dtype)  # int, bool or uint8 into a Dense: Flax promotes them too
        gives: tuple[int, ...] | None = None  # what the torch layer returns, where it is not the Flax shape
        if isinstance(module, torch.nn.Linear):
            if shape[-1:] != (module.in_features,):  # a DenseGeneral over several trailing axes: flattened
                trailing = _trailing(shape, module.in_features)
                shape = (*shape[:-trailing], module.in_features)
                x = self.emit.method("reshape", x, (*self.emit.shape(data_var)[:-trailing], module.in_features))
            gives = (*shape[:-1], module.out_features)
        elif isinstance(module, torch.nn.BatchNorm1d) and len(shape) != 2:
            # torch's BatchNorm1d normalises axis 1, Flax's BatchNorm the last: the channels as rows
            gives = (math.prod(shape[:-1]), shape[-1])
            x = self.emit.method("reshape", x, (-1, shape[-1]))
        node = self.graph.call_module(target, (x,))
        if gives is not None and gives != tuple(out_aval.shape):
            node = self.emit.method("reshape", node, self.emit.shape(eqn.outvars[0]))
        return node


# torch layers whose input is integer indices by design (every other layer computes on floats)
_TAKES_INDICES = (torch.nn.Embedding, torch.nn.EmbeddingBag)


def _trailing(shape: tuple[int, ...], size: int) -> int:
    """How many trailing axes of ``shape`` multiply to ``size`` (a DenseGeneral's input axes)."""
    product, axes = 1, 0
    while product < size and axes < len(shape):
        axes += 1
        product *= shape[-axes]
    return axes


def _install(root: torch.nn.Module, target: str, value: Any, *, buffer: bool = False) -> None:
    """Put a module, parameter or buffer at a dotted path, creating empty parent modules."""
    *parents, leaf = target.split(".")
    owner = root
    for name in parents:
        child = getattr(owner, name, None)
        if not isinstance(child, torch.nn.Module):
            child = torch.nn.Module()
            owner.add_module(name, child)
        owner = child
    if buffer:
        owner.register_buffer(leaf, value)
    elif isinstance(value, torch.nn.Parameter):
        owner.register_parameter(leaf, value)
    else:
        owner.add_module(leaf, value)


def _identifier(name: str, taken: set[str]) -> str:
    """A Python name for an input (a placeholder of the graph), apart from those ``taken`` (``my-input`` beside
    ``my_input`` is ``my_input_1``); added to them."""
    cleaned = _attribute(name)
    cleaned = f"_{cleaned}" if cleaned[0].isdigit() or keyword.iskeyword(cleaned) or cleaned == "self" else cleaned
    unique, count = cleaned, 0
    while unique in taken:
        count += 1
        unique = f"{cleaned}_{count}"
    taken.add(unique)
    return unique


class TorchNames:
    """Torch attribute paths for Flax paths (``Block_0/Dense_1`` -> ``Block_0.Dense_1``), one per path: each part
    made of ASCII letters, digits and ``_`` (no two spellings of one name after Unicode normalisation), kept apart
    from its siblings (``a-b`` and ``a b`` never share a module or a weight: the second is ``a_b_1``), from
    Python keywords, from what a torch module already has (``forward``, ``training``, ``type``) and from
    leading ``__`` (which Python mangles inside a class body)."""

    def __init__(self) -> None:
        self._paths: dict[tuple[str, ...], str] = {(): ""}
        self._taken: dict[str, set[str]] = {}

    def target(self, path: Sequence[str]) -> str:
        """The dotted torch path for a Flax path (the same one each time it is asked)."""
        key = tuple(str(part) for part in path)
        known = self._paths.get(key)
        if known is not None:
            return known
        parent = self.target(key[:-1])
        taken = self._taken.setdefault(parent, set())
        base = _attribute(key[-1])
        if base.startswith("__"):
            base = "_" + base.lstrip("_")
        if keyword.iskeyword(base) or base in _MODULE_ATTRIBUTES or base == "self":  # fx names a node as its target
            base += "_"
        name, suffix = base, 0
        while name in taken:
            suffix += 1
            name = f"{base}_{suffix}"
        taken.add(name)
        self._paths[key] = f"{parent}.{name}" if parent else name
        return self._paths[key]

    def fresh(self, base: str) -> str:
        """A new top-level name of the converter's own (``_constant_3``), apart from every Flax one."""
        taken = self._taken.setdefault("", set())
        name = f"{base}_{len(taken)}"
        while name in taken:
            name += "_"
        taken.add(name)
        return name


# what a (graph) module already has: a layer of that name would hide it, or be hidden
_MODULE_ATTRIBUTES = frozenset(dir(fx.GraphModule)) | frozenset(vars(fx.GraphModule(torch.nn.Module(), fx.Graph())))


def _attribute(name: str) -> str:
    """``name`` with every character but ASCII letters, digits and ``_`` made ``_`` (``_`` when empty)."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in name) or "_"


def _flax_path(eqn: Any) -> str:
    scopes = [s for s in str(eqn.source_info.name_stack).split("/") if s.startswith(SCOPE_PREFIX)]
    return scopes[-1].removeprefix(SCOPE_PREFIX).replace(".", "/") if scopes else ""


def _at(where: str) -> str:
    return f" (in the Flax module {where!r})" if where else " (in the model's own __call__)"


def _structure(tree: Any, leaves: list[Any]) -> Any:
    """The model's output structure with fx nodes as leaves: tuples, lists and dicts as they are; any
    other pytree (a dataclass, a Hugging Face output) as a dict keyed by its field paths."""
    treedef = jax.tree_util.tree_structure(tree)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    if _plain(rebuilt):
        return rebuilt
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    # generated code holds the keys as literals: only exact str (a subclass's own __repr__ never reaches it)
    keys = [str.__str__(jax.tree_util.keystr(path, simple=True, separator=".")) for path, _ in paths]
    if len(set(keys)) < len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise UnsupportedModelError(
            f"the model's output has several entries named {twice} once its keys are written as text; "
            "return a dict with distinct plain str keys"
        )
    return dict(zip(keys, leaves, strict=True))


def _plain(value: Any) -> bool:
    """Whether an output structure can be written as it is: tuples, lists and dicts of those, every dict key
    an exact ``str`` or ``int`` (whose repr, which generated code holds, is a literal)."""
    if isinstance(value, tuple | list):
        return type(value) in (tuple, list) and all(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return (
            type(value) is dict and all(type(k) in (str, int) for k in value) and all(_plain(v) for v in value.values())
        )
    return True
