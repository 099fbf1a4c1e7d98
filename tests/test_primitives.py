"""Each translation of the primitive table against JAX itself: a function that binds the primitive,
converted with ``to_torch`` and run in torch, must give JAX's values (exactly for integers, booleans and
data movement; within a few float32 ulps for arithmetic, whose kernels differ between the frameworks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import bridge
from bridge._tensors import to_numpy, to_tensor
from bridge.convert._primitives import TABLE


class Fn(nn.Module):
    """A Flax module that applies a function: the smallest model holding one primitive."""

    fn: Callable[..., Any]

    def __call__(self, *xs: jax.Array) -> Any:
        return self.fn(*xs)


RNG = np.random.default_rng(0)
X = RNG.normal(size=(3, 4)).astype(np.float32)
Y = RNG.normal(size=(3, 4)).astype(np.float32)
P = RNG.uniform(0.1, 0.9, size=(3, 4)).astype(np.float32)  # inside (0, 1): for log, asin, erf_inv, ...
K = RNG.integers(-7, 8, size=(3, 4)).astype(np.int32)
J = RNG.integers(1, 5, size=(3, 4)).astype(np.int32)
B = RNG.normal(size=(3, 4)) > 0
IMG = RNG.normal(size=(2, 7, 6, 3)).astype(np.float32)

# (primitive, function, inputs); several cases per primitive where it has several forms
CASES: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = [
    ("add", lambda x, y: x + y + 1.5, (X, Y)),
    ("sub", lambda x, y: (x - y, 2.0 - x), (X, Y)),
    ("mul", lambda x, y: x * y * 3.0, (X, Y)),
    ("div", lambda x, y: (x / y, 1.0 / y), (X, Y)),
    ("div", lambda i, j: lax.div(i, j), (K, J)),
    ("rem", lambda i, j: lax.rem(i, j), (K, J)),
    ("max", lambda x, y: (jnp.maximum(x, y), jnp.maximum(x, 0.3)), (X, Y)),
    ("min", lambda x, y: (jnp.minimum(x, y), jnp.minimum(-0.2, x)), (X, Y)),
    ("pow", lambda p, x: p**x, (P, X)),
    ("integer_pow", lambda x: (x**3, x**-2), (X,)),
    ("atan2", jnp.arctan2, (X, Y)),
    ("neg", lambda x: -x, (X,)),
    ("abs", jnp.abs, (X,)),
    ("sign", jnp.sign, (X,)),
    ("floor", jnp.floor, (X,)),
    ("ceil", jnp.ceil, (X,)),
    ("round", lambda x: (lax.round(x * 2), lax.round(x * 2, lax.RoundingMethod.TO_NEAREST_EVEN)), (X,)),
    ("exp", jnp.exp, (X,)),
    ("exp2", jnp.exp2, (X,)),
    ("expm1", jnp.expm1, (X,)),
    ("log", jnp.log, (P,)),
    ("log1p", jnp.log1p, (P,)),
    ("tanh", jnp.tanh, (X,)),
    ("logistic", jax.nn.sigmoid, (X,)),
    ("sin", jnp.sin, (X,)),
    ("cos", jnp.cos, (X,)),
    ("tan", jnp.tan, (X,)),
    ("asin", jnp.arcsin, (P,)),
    ("acos", jnp.arccos, (P,)),
    ("atan", jnp.arctan, (X,)),
    ("sinh", jnp.sinh, (X,)),
    ("cosh", jnp.cosh, (X,)),
    ("asinh", jnp.arcsinh, (X,)),
    ("atanh", jnp.arctanh, (P,)),
    ("erf", jax.scipy.special.erf, (X,)),
    ("erfc", jax.scipy.special.erfc, (X,)),
    ("erf_inv", jax.scipy.special.erfinv, (P,)),
    ("lgamma", jax.scipy.special.gammaln, (P,)),
    ("sqrt", jnp.sqrt, (P,)),
    ("rsqrt", lax.rsqrt, (P,)),
    ("cbrt", jnp.cbrt, (X,)),
    ("square", jnp.square, (X,)),
    ("is_finite", lambda x: jnp.isfinite(x / (x > 0)), (X,)),
    ("eq", lambda i, j: i == j, (K, J)),
    ("ne", lambda i, j: i != j, (K, J)),
    ("lt", lambda x, y: x < y, (X, Y)),
    ("le", lambda i, j: i <= j, (K, J)),
    ("gt", lambda x, y: x > y, (X, Y)),
    ("ge", lambda i, j: i >= j, (K, J)),
    ("not", lambda b, i: (~b, ~i), (B, K)),
    ("and", lambda b, i, j: (b & (i > 0), i & j), (B, K, J)),
    ("or", lambda b, i, j: (b | (i > 0), i | j), (B, K, J)),
    ("xor", lambda b, i, j: (b ^ (i > 0), i ^ j), (B, K, J)),
    ("select_n", lambda b, x, y: jnp.where(b, x, y), (B, X, Y)),
    ("select_n", lambda j, x, y: lax.select_n(j % 3, x, y, x * 2), (J, X, Y)),
    ("clamp", lambda x: lax.clamp(-0.5, x, 0.5), (X,)),
    ("convert_element_type", lambda x: (x * 3).astype(jnp.int32), (X,)),
    ("stop_gradient", lambda x: lax.stop_gradient(x) + 1, (X,)),
    ("reshape", lambda x: x.reshape(4, 3), (X,)),
    ("broadcast_in_dim", lambda x: (jnp.broadcast_to(x[:, None, :], (3, 2, 4)), jnp.zeros((2, 2)) + 1.0), (X,)),
    ("squeeze", lambda x: lax.squeeze(x[:, :1], (1,)), (X,)),
    ("transpose", lambda x: x.T, (X,)),
    ("rev", lambda x: jnp.flip(x, axis=(0, 1)), (X,)),
    ("concatenate", lambda x, y: jnp.concatenate([x, y, x], axis=1), (X, Y)),
    ("split", lambda x: jnp.split(x, [1, 3], axis=1), (X,)),
    (
        "pad",
        lambda x: (jnp.pad(x, ((1, 2), (0, 1)), constant_values=-1.0), lax.pad(x, 0.0, ((-1, 1, 0), (0, 0, 0)))),
        (X,),
    ),
    ("slice", lambda x: x[1:3, ::2], (X,)),
    ("dynamic_slice", lambda x, i: lax.dynamic_slice(x, (jnp.argmax(i[0]), 1), (2, 2)), (X, K)),
    ("iota", lambda x: x + jnp.arange(4, dtype=jnp.float32), (X,)),
    ("reduce_sum", lambda x: (jnp.sum(x, axis=1), jnp.sum(x)), (X,)),
    ("reduce_max", lambda x: jnp.max(x, axis=0), (X,)),
    ("reduce_min", lambda x: jnp.min(x, axis=(0, 1)), (X,)),
    ("reduce_prod", lambda x: jnp.prod(x, axis=(0, 1)), (X,)),
    ("reduce_and", lambda b: jnp.all(b, axis=(0, 1)), (B,)),
    ("reduce_or", lambda b: jnp.any(b, axis=1), (B,)),
    ("argmax", lambda x: jnp.argmax(x, axis=1), (X,)),
    ("argmin", lambda x: jnp.argmin(x, axis=0), (X,)),
    ("cumsum", lambda x: (jnp.cumsum(x, axis=1), lax.cumsum(x, axis=0, reverse=True)), (X,)),
    ("cumprod", lambda x: jnp.cumprod(x, axis=1), (X,)),
    ("cummax", lambda x: lax.cummax(x, axis=1, reverse=True), (X,)),
    ("cummin", lambda x: lax.cummin(x, axis=0), (X,)),
    ("cumlogsumexp", lambda x: lax.cumlogsumexp(x, axis=1), (X,)),
    ("reduce_window_sum", lambda x: nn.avg_pool(x, (3, 2), strides=(2, 1), padding="SAME"), (IMG,)),
    ("reduce_window_max", lambda x: nn.max_pool(x, (2, 3), strides=(2, 2), padding=((1, 0), (0, 1))), (IMG,)),
    ("reduce_window_min", lambda x: lax.reduce_window(x, np.inf, lax.min, (1, 2, 2, 1), (1, 1, 2, 1), "VALID"), (IMG,)),
    ("dot_general", lambda x, y: (x @ y.T, jnp.einsum("ij,ij->j", x, y)), (X, Y)),
    ("dot_general", lambda a: (jnp.einsum("bhwc,bhvc->bhwv", a, a), a @ jnp.ones((3, 5))), (IMG,)),
    (
        "conv_general_dilated",
        lambda a: lax.conv_general_dilated(
            a,
            jnp.ones((2, 3, 3, 4)) * 0.1,
            (1, 2),
            ((1, 0), (1, 1)),
            rhs_dilation=(1, 2),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        ),
        (IMG,),
    ),
    (
        "conv_general_dilated",
        lambda a: lax.conv_general_dilated(
            a,
            jnp.ones((6, 1, 2, 2)) * 0.1,
            (1, 1),
            "SAME",
            feature_group_count=3,
            dimension_numbers=("NHWC", "OIHW", "NCHW"),
        ),
        (IMG,),
    ),
    ("gather", lambda x, j: (jnp.take(x, j[0], axis=1), x[j[:, 0] - 1], x[:, j[1, :2]]), (X, J)),
    ("gather", lambda x, i: jnp.take(x, i[0], axis=1, mode="fill", fill_value=-9.0), (X, K)),
    ("gather", lambda x, i: jnp.take(x, i[0], axis=1, mode="clip"), (X, K)),
    # several axes at once (CLIP's pooling of each row's end token), and out-of-range indices clipped
    ("gather", lambda x, j: (x[jnp.arange(3), j[:, 0]], x[jnp.arange(3), j[:, 1] + 9]), (X, J)),
    ("gather", lambda im, j: im[jnp.arange(2), j[:2, 0], j[:2, 1]], (IMG, J)),
    ("tile", lambda x: (jnp.tile(x, (2, 1, 3)), jnp.tile(x, 2)), (X,)),
    ("stack", lambda x, y: (jnp.stack([x, y], axis=1), jnp.stack([x, y, x])), (X, Y)),
    # index updates of whole windows along one or several axes; out-of-range updates dropped (clipped in
    # clip mode), as Wav2Vec2 marks each row's last valid frame: zeros.at[arange(b), lengths - 1].set(1)
    (
        "scatter",
        lambda x, j: (x.at[jnp.arange(3), j[:, 0]].set(7.0), x.at[jnp.array([2, 0, 5])].set(x[:3] * 2)),
        (X, J),
    ),
    ("scatter", lambda x, j: x.at[:, jnp.array([0, 2, 40])].set(-1.0), (X, J)),
    ("scatter", lambda x, j: x.at[jnp.arange(3), j[:, 0] + 40].set(5.0, mode="clip"), (X, J)),
    ("scatter-add", lambda x, j: (x.at[j[:, 0]].add(x[:3]), x.at[:, jnp.array([1, 1, 99])].add(2.0)), (X, J)),
]


def _primitives(jaxpr: Any) -> set[str]:
    found = set()
    for eqn in jaxpr.eqns:
        found.add(eqn.primitive.name)
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                found |= _primitives(inner)
    return found


@pytest.mark.slow
@pytest.mark.parametrize(("primitive", "fn", "inputs"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_translation_gives_jaxs_values(primitive: str, fn: Callable[..., Any], inputs: tuple[Any, ...]) -> None:
    assert primitive in _primitives(jax.make_jaxpr(fn)(*inputs).jaxpr), f"the case does not bind {primitive}"
    model = Fn(fn)
    module = bridge.to_torch(model, {}, tuple(inputs))
    got = jax.tree.leaves(module(*(to_tensor(x) for x in inputs)))
    expected = jax.tree.leaves(fn(*(jnp.asarray(x) for x in inputs)))
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        g, e = to_numpy(g), np.asarray(e)
        assert g.shape == e.shape
        assert g.dtype == e.dtype
        if np.issubdtype(e.dtype, np.floating):
            np.testing.assert_allclose(g, e, rtol=2e-6 * 8, atol=1e-6, equal_nan=True)
        else:
            np.testing.assert_array_equal(g, e)


def test_every_translated_primitive_has_a_case() -> None:
    covered = {case[0] for case in CASES}
    untested = set(TABLE) - covered - {"add_any", "copy", "copy_p", "optimization_barrier", "expand_dims"}
    untested -= {"imag", "real", "nextafter", "acosh", "digamma"}  # simple one-to-one calls, not worth a case each
    assert not untested, f"primitives with no test case: {sorted(untested)}"


class PositionLookup(nn.Module):
    """A learned position table read through position ids that follow the batch (OPT, rotary models)."""

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        table = self.param("table", nn.initializers.normal(1.0), (16, x.shape[-1]))
        return x + jnp.take(table, positions + 2, axis=0)


def test_a_gather_by_position_ids_takes_any_batch_size() -> None:
    model = PositionLookup()
    x = RNG.normal(size=(2, 5, 4)).astype(np.float32)
    positions = np.broadcast_to(np.arange(5, dtype=np.int32), (2, 5)).copy()
    variables = model.init(jax.random.PRNGKey(0), x, positions)
    module = bridge.to_torch(model, variables, (x, positions))
    x3 = RNG.normal(size=(3, 5, 4)).astype(np.float32)
    p3 = np.broadcast_to(np.arange(5, dtype=np.int32), (3, 5)).copy()
    got = to_numpy(module(to_tensor(x3), to_tensor(p3)))
    np.testing.assert_allclose(got, np.asarray(model.apply(variables, x3, p3)), rtol=1e-6, atol=1e-6)


class ClassTokenPool(nn.Module):
    """CLIP's two batch-sized constructs: a class token tiled to the batch, and each row's token picked by
    ``x[jnp.arange(batch), ids]``."""

    @nn.compact
    def __call__(self, x: jax.Array, ids: jax.Array) -> jax.Array:
        token = self.param("token", nn.initializers.normal(1.0), (1, 1, x.shape[-1]))
        x = jnp.concatenate([jnp.tile(token, (x.shape[0], 1, 1)), x], axis=1)
        return x[jnp.arange(x.shape[0]), ids]


def test_a_tiled_class_token_and_a_row_pick_take_any_batch_size() -> None:
    model = ClassTokenPool()
    x = RNG.normal(size=(2, 5, 4)).astype(np.float32)
    ids = np.array([1, 4], np.int32)
    variables = model.init(jax.random.PRNGKey(0), x, ids)
    module = bridge.to_torch(model, variables, (x, ids))
    x3, ids3 = RNG.normal(size=(3, 5, 4)).astype(np.float32), np.array([0, 5, 2], np.int32)
    got = to_numpy(module(to_tensor(x3), to_tensor(ids3)))
    np.testing.assert_array_equal(got, np.asarray(model.apply(variables, x3, ids3)))
