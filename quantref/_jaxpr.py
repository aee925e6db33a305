"""How :func:`quantref.nn.trace` reads a network out of a jaxpr: marked module calls, inlined sub-jaxprs, and the
primitives that make ReLU, max-pooling and flattening. Private: the public API is :mod:`quantref.nn`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

MARK = "quantref_module_"
INLINE = ("pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "remat", "checkpoint")
IDENTITY = ("copy", "copy_p", "optimization_barrier")


class Marked(nnx.Module):
    """Wraps a module so that its call shows in the jaxpr as one named ``jit`` equation."""

    def __init__(self, module: nnx.Module, index: int):
        self.module = module
        self.index = index

    def __call__(self, x: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        def call(value: jax.Array) -> jax.Array:
            return self.module(value, *args, **kwargs)

        call.__name__ = f"{MARK}{self.index}"
        return jax.jit(call)(x)


class TraceBuilder:
    """Walks a jaxpr and collects steps ``make_step(kind, path, params, inputs)``; value 0 is the model's input and
    step ``i`` writes value ``i + 1``. ``module_step(module, shape)`` names a marked module's call."""

    def __init__(
        self,
        modules: list[tuple[str, nnx.Module]],
        module_step: Callable[[nnx.Module, tuple], tuple[str, dict]],
        make_step: Callable[..., Any],
    ):
        self.modules = modules
        self.module_step = module_step
        self.make_step = make_step
        self.steps: list[Any] = []

    def add(self, kind: str, path: str | None, params: dict, inputs: list[int], shape: tuple) -> int:
        params = {**params, "input_shape": tuple(int(d) for d in shape[1:])}
        self.steps.append(self.make_step(kind, path, tuple(params.items()), tuple(inputs)))
        return len(self.steps)

    def walk(self, jaxpr: Any, values: dict[int, int]) -> None:
        for eqn in jaxpr.eqns:
            inputs = [values[id(var)] for var in eqn.invars if not is_literal(var) and id(var) in values]
            if not inputs:
                continue  # a computation on constants
            name = eqn.primitive.name
            first = eqn.invars[0]
            shape = tuple(first.aval.shape)
            if name in ("pjit", "jit") and str(eqn.params.get("name", "")).startswith(MARK):
                path, module = self.modules[int(eqn.params["name"][len(MARK) :])]
                kind, params = self.module_step(module, shape)
                values[id(eqn.outvars[0])] = self.add(kind, path, params, inputs, shape)
            elif name in INLINE:
                inner = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr") or eqn.params.get("fun_jaxpr")
                inner = getattr(inner, "jaxpr", inner)
                mapping = {
                    id(var): values[id(outer)] for var, outer in zip(inner.invars, eqn.invars) if id(outer) in values
                }
                self.walk(inner, mapping)
                for var, outer in zip(inner.outvars, eqn.outvars):
                    if id(var) in mapping:
                        values[id(outer)] = mapping[id(var)]
            elif name in IDENTITY or (name == "convert_element_type" and eqn.params["new_dtype"] == first.aval.dtype):
                values[id(eqn.outvars[0])] = inputs[0]
            else:
                kind, params = primitive_step(eqn, shape, len(inputs))
                index = self.add(kind, None, params, inputs, shape)
                for var in eqn.outvars:
                    values[id(var)] = index


def is_literal(var: Any) -> bool:
    """Whether a jaxpr input is a literal constant rather than a variable."""
    return not hasattr(var, "aval") or type(var).__name__ == "Literal"


def primitive_step(eqn: Any, shape: tuple, activation_inputs: int) -> tuple[str, dict]:
    """The step a primitive equation on the activations' path is: relu, max_pool, flatten, or its own name."""
    name = eqn.primitive.name
    if name == "max" and activation_inputs == 1 and len(eqn.invars) == 2:
        other = eqn.invars[1] if not is_literal(eqn.invars[0]) else eqn.invars[0]
        value = getattr(other, "val", None)
        if value is not None and np.all(np.asarray(value) == 0):
            return "relu", {}
    if name == "reduce_window_max":
        window = tuple(eqn.params["window_dimensions"])
        if window[0] == 1 and window[-1] == 1 and all(d == 1 for d in eqn.params.get("window_dilation", (1,))):
            return "max_pool", {
                "window": window[1:-1],
                "strides": tuple(eqn.params["window_strides"])[1:-1],
                "padding": tuple(tuple(int(p) for p in pair) for pair in eqn.params["padding"])[1:-1],
            }
    if name == "reshape":
        out_shape = tuple(eqn.outvars[0].aval.shape)
        if len(out_shape) == 2 and out_shape[0] == shape[0] and out_shape[1] == int(np.prod(shape[1:])):
            return "flatten", {}
    return name, {}
