"""Argument checks shared by the numerics (formats, rounding, affine, ranges) and the runtimes. Private.

Every public function of quantref checks its arguments here, in Python, before anything is traced or converted,
and raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, value outside the contract) with a
message that names the parameter and says what is allowed. The checks are cheap: they look at dtypes and shapes,
and at values only when the value is concrete (under ``jax.jit`` a traced value cannot be inspected and is not
checked; the functions then follow their formulas literally).

Two conversions need care, because they change values silently:

- ``jnp.asarray`` of an int64/uint64 array (or numpy scalar) without ``jax_enable_x64`` wraps it to 32 bits
  (``np.int64(2**32 + 3)`` becomes ``3``): integers are range-checked on the *original* array, before converting;
- a float, complex or bool array where integers are wanted would be truncated, lose its imaginary part, or pass as
  0/1: dtypes are checked before converting, never after.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

_FLOAT32_TINY = float(np.finfo(np.float32).tiny)
_ROUNDING_MODES = ("half_to_even", "half_away_from_zero", "half_up", "floor", "ceil", "stochastic")


def is_concrete(value: object) -> bool:
    """Whether a value can be inspected now (a Python or numpy value, or a concrete JAX array, not a tracer).

    Validation of values (not shapes) runs only on concrete values: under ``jax.jit`` they are not known yet.
    """
    return not isinstance(value, jax.core.Tracer)


def check_finite(array: object, name: str) -> None:
    """Refuses NaN and infinity in a concrete array, before a compiled call would turn them into NaN results.

    Args:
      array: the values (a tracer is not checked).
      name: how the error names them.

    Raises:
      ValueError: if a value is NaN or infinite.
    """
    if is_concrete(array) and not bool(jnp.all(jnp.isfinite(jnp.asarray(array)))):
        raise ValueError(f"{name} must be finite: it holds NaN or infinity")


def _type_name(value: object) -> str:
    return type(value).__name__


def as_array(value: object, name: str) -> np.ndarray | jax.Array:
    """``value`` as an array without changing any value: a JAX array (or tracer) stays as it is, anything else goes
    through ``np.asarray`` (which keeps int64 as int64).

    Raises:
      TypeError: for ``None``, strings and bytes, and anything numpy cannot make a numeric array of (ragged lists,
        dicts, arbitrary objects), naming the parameter.
    """
    if isinstance(value, jax.Array):
        return value
    if value is None or isinstance(value, (str, bytes, dict, set)):
        raise TypeError(f"{name} must be an array or a number, got {_type_name(value)} {value!r:.80}")
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        raise ValueError(f"{name} must fit int32 [{INT32_MIN}, {INT32_MAX}], got {value}")
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be an array or a number, got {_type_name(value)} ({error})") from error
    if array.dtype.kind not in "biufc" and not _is_ml_dtype(array.dtype):
        raise TypeError(f"{name} must be a numeric array, got {_type_name(value)} of dtype {array.dtype}")
    return array


def _is_ml_dtype(dtype: np.dtype) -> bool:
    # ml_dtypes types (int4, float8_*, bfloat16) have numpy kind 'V'; they carry a registered type with a name.
    return dtype.kind == "V" and dtype.names is None and dtype.type.__module__.startswith("ml_dtypes")


def is_integer_dtype(dtype: Any) -> bool:
    """Integer dtypes, ml_dtypes' int4/uint4/int2/uint2 included; not bool."""
    return jnp.issubdtype(dtype, jnp.integer)


def is_float_dtype(dtype: Any) -> bool:
    """Real floating-point dtypes (float16/bfloat16/float32/float64 and float8); not complex."""
    return jnp.issubdtype(dtype, jnp.floating)


def check_fits_int32(array: np.ndarray | jax.Array, name: str) -> None:
    """Reject values outside int32, looking at the original (possibly 64-bit) array before any conversion."""
    if not array.size or not is_concrete(array):
        return
    if isinstance(array, jax.Array) and array.dtype != jnp.uint32:
        return  # a JAX array without x64 is at most 32 bits wide
    if np.dtype(array.dtype).itemsize > 4 or array.dtype == np.uint32:
        low, high = int(array.min()), int(array.max())
        if low < INT32_MIN or high > INT32_MAX:
            raise ValueError(
                f"{name} must fit int32 [{INT32_MIN}, {INT32_MAX}], got values in [{low}, {high}] ({array.dtype}): "
                "converting would wrap them silently"
            )


def int_array(value: object, name: str, *, dtype: Any = jnp.int32, error: type[Exception] = TypeError) -> jax.Array:
    """An integer array, range-checked against int32 on the original values, converted to ``dtype``.

    Raises:
      TypeError: for non-arrays; ``error`` (default TypeError) for float, complex or bool arrays (which would be
        truncated or pass as 0/1).
      ValueError: for values outside int32.
    """
    array = as_array(value, name)
    if not is_integer_dtype(array.dtype):
        raise error(f"{name} must be an integer array, got dtype {array.dtype}")
    check_fits_int32(array, name)
    return jnp.asarray(array).astype(dtype)


def float_array(value: object, name: str, *, error: type[Exception] = TypeError) -> jax.Array:
    """A real floating-point array as a JAX array, dtype unchanged.

    Raises:
      TypeError: for non-arrays; ``error`` (default TypeError) for integer, bool or complex arrays.
    """
    array = as_array(value, name)
    if not is_float_dtype(array.dtype):
        raise error(f"{name} must be a real floating-point array, got dtype {array.dtype}")
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf, which the callers check
        return jnp.asarray(array)


def real_array(value: object, name: str) -> jax.Array:
    """A real (integer or floating-point) array, as float32; ints beyond float32's exact range are allowed.

    Raises:
      TypeError: for non-arrays, complex and bool arrays.
    """
    array = as_array(value, name)
    if not (is_float_dtype(array.dtype) or is_integer_dtype(array.dtype)):
        raise TypeError(f"{name} must be a real array (integers or floats), got dtype {array.dtype}")
    if isinstance(array, np.ndarray) and array.dtype.kind in "iu":
        array = array.astype(np.float64)  # exact for int32, and no wrap for wider integers
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf, which the callers check
        return jnp.asarray(array).astype(jnp.float32)


def check_int(value: object, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """A Python or numpy integer (not a bool), optionally within ``[low, high]``, as a Python int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {_type_name(value)} {value!r:.80}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ValueError(f"{name} must be an int in {bounds}, got {value}")
    return value


def check_bool(value: object, name: str) -> bool:
    """A Python or numpy bool, as a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {_type_name(value)} {value!r:.80}")
    return bool(value)


def check_real(value: object, name: str) -> float:
    """A Python or numpy real number (int or float, not a bool), as a Python float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {_type_name(value)} {value!r:.80}")
    return float(value)


def check_choice(value: object, name: str, allowed: Sequence[str]) -> str:
    """One of ``allowed`` (strings)."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r:.80}")
    return value


def check_normal_float32(values: np.ndarray, name: str) -> None:
    """Reject values whose magnitude is below the smallest normal float32 (about 1.18e-38), naming the parameter.

    JAX (XLA) on CPU flushes subnormal float32 values to zero, so a subnormal scale cannot give the answer a runtime
    gives; quantref refuses such scales rather than return a silently different number.

    Raises:
      ValueError: if any value is subnormal (or zero).
    """
    values = np.asarray(values)
    subnormal = np.abs(values) < _FLOAT32_TINY
    if np.any(subnormal):
        raise ValueError(
            f"{name} must be >= {_FLOAT32_TINY:.6g} (the smallest normal float32): JAX flushes subnormal float32 to "
            f"zero on CPU, so results would not match; got values such as {values[subnormal].ravel()[:3].tolist()}"
        )


def check_scale(scale: jax.Array, name: str = "scale", *, error: type[Exception] = TypeError) -> None:
    """A float scale, finite, > 0 and normal in float32 everywhere (when concrete).

    Raises:
      ``error`` (default TypeError): for a non-float dtype.
      ValueError: for a value that is not finite and > 0 in float32, or below the smallest normal float32.
    """
    if not is_float_dtype(scale.dtype):
        raise error(f"{name} must be a floating-point array, got dtype {scale.dtype}")
    if is_concrete(scale):
        with np.errstate(over="ignore", under="ignore"):
            values = np.asarray(scale).astype(np.float32)
        good = np.isfinite(values) & (values > 0)
        if not np.all(good):
            raise ValueError(
                f"{name} must be finite and > 0 everywhere (in float32), got values such as "
                f"{np.asarray(scale)[~good].ravel()[:3].tolist()}"
            )
        check_normal_float32(values, name)


def check_symmetric_divisor(symmetric_divisor: object) -> None:
    """``"qmax"`` or ``"half_levels"`` (see :func:`quantref.affine.scale_zero_point`)."""
    check_choice(symmetric_divisor, "symmetric_divisor", ("qmax", "half_levels"))


def check_format(fmt: object, name: str = "fmt") -> Any:
    """An :class:`quantref.formats.IntFormat`, returned unchanged.

    Raises:
      TypeError: for anything else, naming the parameter and how to build one.
    """
    from quantref.formats import IntFormat  # formats imports this module

    if not isinstance(fmt, IntFormat):
        raise TypeError(
            f"{name} must be a quantref.formats.IntFormat (see formats.int_format), got {_type_name(fmt)} {fmt!r:.80}"
        )
    return fmt


def is_prng_key(key: object) -> bool:
    """A JAX PRNG key: a typed key array (``jax.random.key``) or a raw uint32 ``(..., 2)`` key (``PRNGKey``)."""
    if isinstance(key, jax.Array):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            return True
        return key.dtype == jnp.uint32 and key.ndim >= 1 and key.shape[-1] == 2
    return isinstance(key, np.ndarray) and key.dtype == np.uint32 and key.ndim >= 1 and key.shape[-1] == 2


def check_rounding(rounding: object, key: object) -> None:
    """A rounding mode name (:data:`quantref.rounding.ROUNDING_MODES`) and, for ``"stochastic"``, a PRNG key.

    Raises:
      ValueError: for an unknown mode, or ``"stochastic"`` without a key.
      TypeError: for ``"stochastic"`` with something that is not a single PRNG key.
    """
    check_choice(rounding, "rounding", _ROUNDING_MODES)
    if rounding == "stochastic":
        if key is None:
            raise ValueError("rounding='stochastic' needs key=jax.random.key(seed)")
        typed = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        if not is_prng_key(key) or np.shape(key) != (() if typed else (2,)):
            raise TypeError(
                f"key must be one PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)) for "
                f"rounding='stochastic', got {_type_name(key)} {key!r:.80}"
            )


def check_granularity(
    x_shape: tuple[int, ...],
    param_shape: tuple[int, ...],
    axis: int | None,
    block_size: int | None,
    param_name: str = "scale",
) -> int | None:
    """Check that a quantization parameter's shape fits the granularity, and normalise the axis.

    Args:
      x_shape: shape of the tensor being quantized.
      param_shape: shape of ``scale`` (or ``zero_point``).
      axis: ``None`` for per-tensor, else the channel/group axis (negative allowed).
      block_size: ``None`` for per-channel; a positive group size for per-group.
      param_name: the parameter's name, for the error message.

    Returns:
      The axis as a non-negative int, or ``None`` for per-tensor.

    Raises:
      ValueError: naming the parameter when the axis is out of range, ``block_size`` is not a positive int or is
        given without an axis, or the parameter's shape does not fit.
    """
    ndim = len(x_shape)
    if axis is None:
        if block_size is not None:
            raise ValueError(f"block_size={block_size!r} needs an axis to group along; got axis=None")
        if param_shape != ():
            raise ValueError(f"per-tensor {param_name} (axis=None) must be a scalar, got shape {param_shape}")
        return None
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise ValueError(f"axis must be None or an int in [{-ndim}, {ndim - 1}] for a {ndim}-d input, got {axis!r}")
    axis = int(axis) % ndim
    if block_size is None:
        if param_shape != (x_shape[axis],):
            raise ValueError(
                f"per-channel {param_name} along axis {axis} must have shape ({x_shape[axis]},), got {param_shape}"
            )
        return axis
    if isinstance(block_size, (bool, np.bool_)) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be None or a positive int, got {block_size!r}")
    groups = -(-x_shape[axis] // block_size)
    expected = x_shape[:axis] + (groups,) + x_shape[axis + 1 :]
    if param_shape != expected:
        raise ValueError(
            f"per-group {param_name} (axis={axis}, block_size={block_size}) must have shape {expected}, "
            f"got {param_shape}"
        )
    return axis


# ----------------------------------------------------------------------------------------------------------------
# Runtime operators: typed operands, float32 scales, matmul and convolution geometry


_HALF_DTYPES = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
_FLOAT8_DTYPES = tuple(
    np.dtype(d)
    for d in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz)
)


def float32_array(value: object, name: str) -> jax.Array:
    """A float32/float16/bfloat16/float64 array (not float8, not complex), computed in float32.

    Raises:
      TypeError: for non-arrays and every other dtype, naming the parameter.
    """
    array = as_array(value, name)
    if not is_float_dtype(array.dtype) or np.dtype(array.dtype) in _FLOAT8_DTYPES:
        raise TypeError(f"{name} must be a float32/float16/bfloat16 array, got dtype {array.dtype}")
    return jnp.asarray(array).astype(jnp.float32)


def scale_float32(value: object, name: str) -> jax.Array:
    """A runtime's scale: float32 (float64 and Python floats are rounded to it), finite, > 0 and normal.

    Raises:
      TypeError: for a non-float value, or a float16/bfloat16 scale (with which runtimes compute in half precision).
      ValueError: (concrete values) for a value that is not finite and > 0 in float32, or is subnormal.
    """
    array = as_array(value, name)
    if np.dtype(array.dtype) in _HALF_DTYPES:
        raise TypeError(
            f"{name} must be float32 (float32 only; float16/bfloat16 scales (opset 23 precision) are not "
            f"supported), got dtype {np.dtype(array.dtype).name}"
        )
    scale = float32_array(array, name)
    if is_concrete(scale):
        with np.errstate(over="ignore", under="ignore"):
            values = np.asarray(array).astype(np.float32)
        good = np.isfinite(values) & (values > 0)
        if not np.all(good):
            raise ValueError(
                f"{name} must be finite and > 0 everywhere (the runtime has no defined answer otherwise), "
                f"got values such as {np.asarray(array)[~good].ravel()[:3].tolist()}"
            )
        check_normal_float32(values, name)
    return scale


def check_scale_product(first: jax.Array, second: jax.Array, names: str) -> None:
    """``f32(s_1 s_2)``, the first step of a requantization multiplier, must be normal (else XLA flushes it)."""
    if is_concrete(first) and is_concrete(second):
        with np.errstate(under="ignore"):
            product = np.asarray(first, np.float32) * np.asarray(second, np.float32)
        check_normal_float32(np.asarray(product, np.float32), names)


def typed_array(value: object, name: str, allowed: Sequence[Any]) -> jax.Array:
    """An array whose dtype (checked before any conversion) is one of ``allowed``; the dtype is the value's type.

    Raises:
      TypeError: for non-arrays or another dtype, naming the parameter, its dtype and the allowed ones.
    """
    array = as_array(value, name)
    allowed = [np.dtype(d) for d in allowed]
    if np.dtype(array.dtype) not in allowed:
        names = ", ".join(d.name for d in allowed)
        raise TypeError(f"{name} must have one of the dtypes {names}, got {np.dtype(array.dtype).name}")
    return jnp.asarray(array)


def dtype_choice(value: object, name: str, choices: dict[str, np.dtype]) -> np.dtype:
    """A dtype given as one of ``choices``' names or as a dtype (object) among its values.

    Raises:
      TypeError: for something that is not a dtype.
      ValueError: for a dtype or name not among the choices.
    """
    allowed = ", ".join(choices)
    if isinstance(value, str):
        if value not in choices:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        return choices[value]
    try:
        dtype = np.dtype(value)
    except TypeError as error:
        raise TypeError(f"{name} must be a dtype or a dtype name ({allowed}), got {value!r:.80}") from error
    if dtype not in choices.values():
        raise ValueError(f"{name} must be one of {allowed}, got {dtype}")
    return dtype


def check_matmul_shapes(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> tuple[int, int]:
    """numpy-matmul compatibility of ``a`` and ``b``; returns (rows M, columns N) (1 for a 1-D operand)."""
    if len(a_shape) < 1 or len(b_shape) < 1:
        raise ValueError(f"a and b must be at least 1-D, got shapes {a_shape} and {b_shape}")
    k_a = a_shape[-1]
    k_b = b_shape[0] if len(b_shape) == 1 else b_shape[-2]
    if k_a != k_b:
        raise ValueError(
            f"a's last dimension ({k_a}) must equal b's contraction dimension ({k_b}); "
            f"got shapes a={a_shape}, b={b_shape}"
        )
    try:
        np.broadcast_shapes(a_shape[:-2], b_shape[:-2])
    except ValueError as error:
        raise ValueError(f"a and b batch dimensions do not broadcast: a={a_shape}, b={b_shape}") from error
    rows = 1 if len(a_shape) == 1 else a_shape[-2]
    columns = 1 if len(b_shape) == 1 else b_shape[-1]
    return rows, columns


def check_conv_geometry(x_shape, w_shape, strides, pads, dilations, group) -> None:
    """A 2-D NCHW convolution: ranks, ``strides``/``pads``/``dilations`` (ONNX order), ``group`` and the fit."""
    if len(x_shape) != 4:
        raise ValueError(f"x must be 4-D NCHW, got shape {x_shape}")
    if len(w_shape) != 4:
        raise ValueError(f"w must be 4-D (M, C/group, kH, kW), got shape {w_shape}")
    for name, value, length in (("strides", strides, 2), ("pads", pads, 4), ("dilations", dilations, 2)):
        if (
            not isinstance(value, (tuple, list, np.ndarray))
            or len(value) != length
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in value)
        ):
            raise ValueError(f"{name} must be {length} ints, got {value!r}")
    if any(s < 1 for s in strides) or any(d < 1 for d in dilations) or any(p < 0 for p in pads):
        raise ValueError(f"strides and dilations must be >= 1 and pads >= 0, got {strides}, {dilations}, {pads}")
    if isinstance(group, (bool, np.bool_)) or not isinstance(group, (int, np.integer)) or group < 1:
        raise ValueError(f"group must be a positive int, got {group!r}")
    channels, out_channels = x_shape[1], w_shape[0]
    if channels % group or out_channels % group:
        raise ValueError(
            f"group={group} must divide x's channels ({channels}) and w's output channels ({out_channels})"
        )
    if w_shape[1] != channels // group:
        raise ValueError(f"w.shape[1] must be x's channels / group = {channels // group}, got w shape {w_shape}")
    for i in range(2):
        padded = x_shape[2 + i] + pads[i] + pads[2 + i]
        if padded < dilations[i] * (w_shape[2 + i] - 1) + 1:
            raise ValueError(
                f"the dilated kernel {w_shape[2:]} does not fit the padded input {x_shape[2:]} "
                f"(pads={tuple(pads)}, dilations={tuple(dilations)})"
            )


def scale_granularity(
    x_shape: tuple[int, ...], scale_shape: tuple[int, ...], axis: int, block_size: int, name: str
) -> tuple[int | None, int | None]:
    """Map ONNX's (scale shape, axis, block_size) to :func:`check_granularity`'s (axis | None, block_size | None)."""
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 0:
        raise ValueError(f"block_size must be an int >= 0 (0 = per-tensor or per-axis), got {block_size!r}")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise ValueError(f"axis must be an int, got {axis!r}")
    if block_size == 0 and (scale_shape == () or scale_shape == (1,)):
        return None, None
    if block_size == 0 and len(scale_shape) != 1:
        raise ValueError(
            f"{name} must be a scalar (per-tensor) or 1-D (per-axis) when block_size=0, got shape {scale_shape}"
        )
    resolved = check_granularity(x_shape, scale_shape, axis, block_size or None, name)
    return resolved, block_size or None


def zero_point_like(zero_point, scale: jax.Array, dtype: np.dtype, name: str) -> jax.Array:
    """The zero point, which must have the scale's shape, or zeros of ``dtype`` when it is None."""
    if zero_point is None:
        return jnp.zeros(scale.shape, dtype)
    if zero_point.shape != scale.shape:
        raise ValueError(f"{name} must have the scale's shape {scale.shape}, got {zero_point.shape}")
    return zero_point


def operand_zero_point(zero_point, operand: jax.Array, name: str, per_index: int | None, what: str) -> jax.Array:
    """A zero point of the operand's dtype: a scalar, or 1-D of length ``per_index`` (when given)."""
    if zero_point is None:
        return jnp.zeros((), operand.dtype)
    zero_point = typed_array(zero_point, name, [np.dtype(operand.dtype)])
    if zero_point.shape in ((), (1,)):
        return zero_point.reshape(())
    if per_index is not None and zero_point.shape == (per_index,):
        return zero_point
    allowed = "a scalar" + (f" or shape ({per_index},) ({what})" if per_index is not None else "")
    raise ValueError(f"{name} must be {allowed}, got shape {zero_point.shape}")


def scalar_zero_point(y_zero_point, name: str) -> jax.Array:
    """A scalar (or 1-element) uint8/int8 zero point; its dtype is the output type."""
    zero_point = typed_array(y_zero_point, name, (np.dtype(np.int8), np.dtype(np.uint8)))
    if zero_point.shape not in ((), (1,)):
        raise ValueError(f"{name} must be a scalar, got shape {zero_point.shape}")
    return zero_point.reshape(())


def scalar_scale(value, name: str) -> jax.Array:
    """A scalar (or 1-element) float32 scale, checked as :func:`scale_float32`."""
    scale = scale_float32(value, name)
    if scale.shape not in ((), (1,)):
        raise ValueError(f"{name} must be a scalar, got shape {scale.shape}")
    return scale.reshape(())


def per_index_scale(value, name: str, length: int, what: str) -> jax.Array:
    """A float32 scale, scalar or one per index (``(length,)``), checked as :func:`scale_float32`."""
    scale = scale_float32(value, name)
    if scale.shape in ((), (1,)):
        return scale.reshape(())
    if scale.shape == (length,):
        return scale
    raise ValueError(f"{name} must be a scalar or shape ({length},) ({what}), got shape {scale.shape}")


# ----------------------------------------------------------------------------------------------------------------
# Range observers


def check_observer_granularity(axis: object, block_size: object, allow_groups: bool = True) -> None:
    """``axis``/``block_size`` types when an observer is built (the shape comes with the first batch)."""
    if axis is not None and (isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer))):
        raise ValueError(f"axis must be None or an int, got {axis!r:.80}")
    if block_size is None:
        return
    if isinstance(block_size, (bool, np.bool_)) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be None or a positive int, got {block_size!r:.80}")
    if axis is None:
        raise ValueError(f"block_size={block_size} needs an axis to group along; got axis=None")
    if not allow_groups:
        raise ValueError(
            f"block_size={block_size}: histogram observers (percentile, mse, entropy) are per-tensor or per-channel "
            "only; use block_size=None, or min_max/abs_max for per-group ranges"
        )


def check_num_bins(num_bins: object) -> int:
    """A histogram's bins per sign: a power of two in ``[4, 2**20]``."""
    if (
        isinstance(num_bins, (bool, np.bool_))
        or not isinstance(num_bins, (int, np.integer))
        or not 4 <= num_bins <= 2**20
        or num_bins & (num_bins - 1)
    ):
        # A power of two keeps |x| * num_bins / 2**e exact; the bounds keep that factor a normal float32.
        raise ValueError(f"num_bins must be a power of two in [4, 2**20], got {num_bins!r:.80}")
    return int(num_bins)


def real_batch(x: object, name: str = "x") -> jax.Array:
    """A batch of real values (traced or not) as float32; complex, bool, ``None`` and strings are refused.

    Raises:
      TypeError: naming the parameter.
    """
    array = as_array(x, name)
    if not (is_float_dtype(array.dtype) or is_integer_dtype(array.dtype)):
        raise TypeError(f"{name} must be a real (float or integer) array, got dtype {array.dtype}")
    if isinstance(array, np.ndarray) and array.dtype.kind in "iu":
        array = array.astype(np.float64)  # no int64 wrap on the way to float32
    return jnp.asarray(array).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------------------
# TFLite kernels' parameters, and requantization bounds


def check_multiplier_shift(quantized_multiplier: jax.Array, shift: jax.Array, single_rounding: bool) -> None:
    """A TFLite multiplier's shift in ``-31..30``, and a multiplier >= 0 for single rounding (concrete values)."""
    if is_concrete(shift):
        values = np.asarray(shift)
        if values.size and (values.min() < -31 or values.max() > 30):
            raise ValueError(f"shift must lie in -31..30, got values in [{values.min()}, {values.max()}]")
    if single_rounding and is_concrete(quantized_multiplier):
        values = np.asarray(quantized_multiplier)
        if values.size and values.min() < 0:
            raise ValueError(
                f"quantized_multiplier must be >= 0 with single_rounding=True (TFLite DCHECKs it), got {values.min()}"
            )


def check_output_multipliers(output_multiplier, output_shift, channels: int, single_rounding: bool):
    """Per-output-channel TFLite multipliers and shifts: int32, shape ``(channels,)``, shifts in range."""
    output_multiplier = int_array(output_multiplier, "output_multiplier")
    output_shift = int_array(output_shift, "output_shift")
    for name, arr in (("output_multiplier", output_multiplier), ("output_shift", output_shift)):
        if arr.shape != (channels,):
            raise ValueError(f"{name} must have shape ({channels},), one per output channel, got {arr.shape}")
    check_multiplier_shift(output_multiplier, output_shift, single_rounding)
    return output_multiplier, output_shift


def int8_array(arr, name: str) -> jax.Array:
    """An int8 array (the dtype checked before any conversion)."""
    return typed_array(arr, name, [np.int8])


def check_int8_offsets(input_zero_point, output_zero_point, activation_min, activation_max):
    """A TFLite int8 kernel's zero points and activation bounds: ints in ``[-128, 127]``, ordered."""
    for name, value in (
        ("input_zero_point", input_zero_point),
        ("output_zero_point", output_zero_point),
        ("activation_min", activation_min),
        ("activation_max", activation_max),
    ):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if not -128 <= value <= 127:
            raise ValueError(f"{name} must lie in the int8 range [-128, 127], got {value}")
    if activation_min > activation_max:
        raise ValueError(f"activation_min ({activation_min}) must be <= activation_max ({activation_max})")


def bias_int32(bias, channels: int) -> jax.Array:
    """An int32 bias of shape ``(channels,)`` (int64 values checked before conversion), or zeros for None."""
    if bias is None:
        return jnp.zeros((channels,), jnp.int32)
    bias = int_array(bias, "bias")
    if bias.shape != (channels,):
        raise ValueError(f"bias must have shape ({channels},), one per output channel, got {bias.shape}")
    return bias


def positive_pair(value, name: str) -> tuple[int, int]:
    """A pair (tuple or list) of positive ints, such as strides or dilations."""
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v >= 1 for v in value)
    ):
        raise ValueError(f"{name} must be a pair of positive ints, got {value!r}")
    return int(value[0]), int(value[1])


def host_float64(value, name: str) -> np.ndarray:
    """Real numbers (Python, numpy, or a concrete array) as a float64 numpy array; not complex, bool or None."""
    array = as_array(value, name)
    if not (is_float_dtype(array.dtype) or is_integer_dtype(array.dtype)):
        raise TypeError(f"{name} must be real numbers, got dtype {array.dtype}")
    if not is_concrete(array):
        raise TypeError(f"{name} is computed on the host at prepare time; pass concrete values, not traced ones")
    return np.asarray(array).astype(np.float64)


def check_broadcast(**arrays: jax.Array) -> None:
    """The arrays' shapes broadcast together, else a ValueError naming them."""
    try:
        jnp.broadcast_shapes(*(a.shape for a in arrays.values()))
    except ValueError:
        shapes = ", ".join(f"{name} {a.shape}" for name, a in arrays.items())
        raise ValueError(f"{' and '.join(arrays)} must broadcast, got shapes {shapes}") from None


def requantize_bounds(zero_point: jax.Array, qmin: jax.Array, qmax: jax.Array, exact_within: int) -> bool | None:
    """For concrete bounds of a requantization: check them, and say whether ``qmin - z`` and ``qmax - z`` lie
    within ``[-exact_within, exact_within]`` (where a fast rounding is exact); None when any is traced."""
    if not all(is_concrete(v) for v in (zero_point, qmin, qmax)):
        return None
    z, low, high = (np.asarray(v, np.int64) for v in (zero_point, qmin, qmax))
    if np.any(low > high):
        raise ValueError(f"qmin must be <= qmax, got qmin={low.tolist()} and qmax={high.tolist()}")
    low, high = low - z, high - z
    if np.any(low < INT32_MIN) or np.any(high > INT32_MAX):
        raise ValueError("qmin - zero_point and qmax - zero_point must fit int32 (the bounds MLAS clamps to)")
    return bool(np.all(low >= -exact_within) and np.all(high <= exact_within))
