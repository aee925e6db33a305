"""Weight-only quantization of a model's linear layers: per-channel or per-group grids, round-to-nearest or GPTQ,
and the packed bytes that go to disk.

Weight-only quantization keeps activations in float and stores each kernel $W$ (``(in, out)``) as $b$-bit codes
$q$ with a few float scales; the layer computes with $\\hat W = s \\odot q$. The grid is symmetric, with one scale
per output channel, or per **group** of $g$ consecutive input rows and output channel (the grid of GPTQ, AWQ and
the int4 formats of llama.cpp and ONNX's ``MatMulNBits``):

$$
s_{k,c} = \\frac{\\max_{i \\in \\text{group } k} |W_{i,c}|}{(q_{max} - q_{min}) / 2}, \\qquad
q_{i,c} = \\operatorname{clamp}\\big(\\operatorname{rne}(W_{i,c} / s_{k(i),c}),\\ q_{min},\\ q_{max}\\big) .
$$

On the narrow grid of :func:`quantref.ptq.weight_format` ($[-7, 7]$ at int4, 15 levels) the divisor is $q_{max}$
and the largest weight lands on the last code. On the full signed grid ($[-8, 7]$, 16 levels; qwix's int4, and
PyTorch's symmetric observer) it is $q_{max} + \\frac12$: the largest magnitude lands on the outer edge of the
last code's bucket, so every level is used — at int3 that is 8 levels instead of 7.

A smaller group follows the weights more closely and costs more scales: $16/g$ extra bits per weight with float16
scales (0.125 at $g = 128$, 0.5 at $g = 32$).

- :func:`rtn_weights` rounds every kernel to nearest; :func:`gptq_weights` chooses the rounding with
  :func:`quantref.gptq.gptq`, layer after layer on the inputs the already-quantized layers produce (the GPTQ
  paper's sequential order).
  Both return ``{path: WeightQuant}``.
- :func:`fake_quant_model` puts the result into a model: each layer becomes a :class:`quantref.nn.QuantLayer`
  whose weight quantizer (:class:`GroupFakeQuant`, static scales) rounds its kernel to the stored grid.
- :func:`save_packed` writes the quantized model as a safetensors file — codes packed ``8 / b`` to a byte (int4)
  or as a bit stream (int3, 8 codes in 3 bytes), float16 scales, every other tensor float32 — and
  :func:`load_packed` reads it back.

References:
  Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
  arXiv:2210.17323, 2022, sec. 4-5 (grouping, the sequential order).
  Dettmers & Zettlemoyer, "The case for 4-bit precision: k-bit Inference Scaling Laws", arXiv:2212.09720, 2022
  (group size against bits per weight).
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from quantref import _validate, affine, formats, gptq, nn

__all__ = [
    "WeightQuant",
    "GroupFakeQuant",
    "group_scales",
    "quantize_kernel",
    "grid_bounds",
    "grid_scales",
    "grid_round",
    "rtn_weights",
    "gptq_weights",
    "fake_quant_model",
    "dequantized_model",
    "pack_bits",
    "unpack_bits",
    "save_packed",
    "load_packed",
]

#: Scales are stored as float16, so they are rounded to float16 before any code is computed (and floored at its
#: smallest normal number, so that an all-zero group still has a positive scale).
SCALE_DTYPE = np.float16
_SMALLEST_SCALE = float(np.finfo(np.float16).tiny)


class WeightQuant(NamedTuple):
    """One layer's quantized kernel.

    Attributes:
      codes: ``(in, out)`` integer codes (``int8`` storage) of the kernel.
      scale: ``(out,)`` per output channel, or ``(in // group_size, out)`` per group of rows; float32 values that
        float16 holds exactly.
      fmt: the signed integer grid of the codes.
      row_scale: ``(in,)`` divisors of the kernel's rows, or ``None``: AWQ's scale for a layer whose input
        cannot absorb it (:func:`quantref.scaling.awq`), kept beside the codes as float16 numbers.
    """

    codes: jax.Array
    scale: jax.Array
    fmt: formats.IntFormat
    row_scale: jax.Array | None = None

    @property
    def group_size(self) -> int | None:
        """Rows per group, or ``None`` for one scale per output channel."""
        return self.codes.shape[0] // self.scale.shape[0] if self.scale.ndim == 2 else None

    def dequantize(self) -> jax.Array:
        """The kernel the layer computes with, $\\hat W = s \\odot q$ (rows divided by ``row_scale`` if set),
        float32 ``(in, out)``."""
        return _dequantize(self.codes, self.scale, self.row_scale)


class GroupFakeQuant(nnx.Module):
    """A weight quantizer with static scales per output channel or per group of input rows (for
    :class:`quantref.nn.QuantLayer`): $\\hat W = s\\,\\operatorname{clamp}(\\operatorname{rne}(W / s), q_{min},
    q_{max})$, with the rows then divided by ``row_scale`` if it is set.

    Attributes:
      scale: ``(out,)`` or ``(groups, out)`` float32 scales.
      fmt: the weight grid.
      row_scale: ``(in,)`` divisors of the rows, or ``None``.
    """

    def __init__(self, scale: jax.Array, fmt: formats.IntFormat, row_scale: jax.Array | None = None):
        self.scale = nnx.Variable(jnp.asarray(scale, jnp.float32))
        self.fmt = fmt
        self.row_scale = None if row_scale is None else nnx.Variable(jnp.asarray(row_scale, jnp.float32))

    def __call__(self, kernel: jax.Array) -> jax.Array:
        scale = self.scale[...]
        axis, block = _granularity(scale, kernel.shape[0])
        quantized = affine.fake_quant(kernel, scale, None, self.fmt, axis=axis, block_size=block)
        return quantized if self.row_scale is None else quantized / self.row_scale[...][:, None]


def group_scales(kernel: jax.Array, fmt: formats.IntFormat, group_size: int | None = None) -> jax.Array:
    """Symmetric scales of a kernel, per output channel or per group of rows, as float16 numbers.

    $s = \\max|W| / ((q_{max} - q_{min}) / 2)$ over each group of rows and output channel (or each output
    channel): :func:`quantref.affine.scale_zero_point` with ``symmetric_divisor="half_levels"``, which is
    $q_{max}$ on a narrow grid and $q_{max} + \\frac12$ on a full one. The scale is then rounded to the nearest
    float16 and floored at float16's smallest normal number, so that the scales stored on disk are the scales every
    code was computed with.

    Args:
      kernel: ``(in, out)`` float kernel.
      fmt: the signed weight grid.
      group_size: rows per group (dividing ``in``), or ``None`` for one scale per output channel.

    Returns:
      ``(out,)`` or ``(in // group_size, out)`` float32 scales, each a float16 number.

    Raises:
      ValueError: if ``kernel`` is not a matrix, ``group_size`` does not divide its rows, or ``fmt`` is not a signed
        grid of 2 to 8 bits.
    """
    fmt = _check_format(fmt)
    kernel = jnp.asarray(kernel, jnp.float32)
    if kernel.ndim != 2:
        raise ValueError(f"kernel must be an (in, out) matrix, got shape {kernel.shape}")
    rows, columns = kernel.shape
    _check_group_size(group_size, rows)
    if group_size is None:
        absmax = jnp.abs(kernel).max(axis=0)
    else:
        absmax = jnp.abs(kernel).reshape(rows // group_size, group_size, columns).max(axis=1)
    scale, _ = affine.scale_zero_point(-absmax, absmax, fmt, symmetric=True, symmetric_divisor="half_levels")
    return jnp.maximum(scale, _SMALLEST_SCALE).astype(SCALE_DTYPE).astype(jnp.float32)


def quantize_kernel(kernel: jax.Array, scale: jax.Array, fmt: formats.IntFormat) -> jax.Array:
    """Round-to-nearest codes of a kernel on the grid of ``scale`` (per channel or per group, by its shape):
    :func:`quantref.gptq.round_to_nearest`.

    Returns:
      ``(in, out)`` ``int8`` codes.
    """
    return gptq.round_to_nearest(jnp.asarray(kernel, jnp.float32), scale, fmt).astype(jnp.int8)


def rtn_weights(
    model: nnx.Module,
    fmt: formats.IntFormat,
    group_size: int | None = None,
    *,
    select: str | Sequence[str] | None = None,
    skip: str | Sequence[str] | None = None,
) -> dict[str, WeightQuant]:
    """Round-to-nearest weight-only quantization of a model's linear layers.

    Args:
      model: any NNX model (its ``nnx.Linear`` kernels are quantized; convolutions are refused).
      fmt: the signed weight grid, 2 to 8 bits (:func:`quantref.ptq.weight_format` for the narrow one,
        :func:`quantref.formats.int_format` for the full one).
      group_size: rows per group, or ``None`` for one scale per output channel.
      select: path patterns of the layers (:func:`quantref.nn.find_layers`); ``None`` takes all.
      skip: path patterns to leave in float (e.g. ``"head"``).

    Returns:
      ``{path: WeightQuant}``.

    Raises:
      ValueError: for a grid that is not signed with 2 to 8 bits, a group size that does not divide a layer's
        rows, a convolution, or a kernel holding NaN or infinity.
    """
    fmt = _check_format(fmt)
    result = {}
    for path, kernel in _kernels(model, select, skip).items():
        _check_kernel(path, kernel, group_size)
        codes, scale = _round_kernel(kernel, grid_bounds(fmt), group_size)
        result[path] = WeightQuant(codes, scale, fmt)
    return result


def gptq_weights(
    model: nnx.Module,
    batches: Sequence[jax.Array | np.ndarray],
    fmt: formats.IntFormat,
    group_size: int | None = None,
    *,
    act_order: bool = True,
    damping: float = 0.01,
    block_size: int = 128,
    select: str | Sequence[str] | None = None,
    skip: str | Sequence[str] | None = None,
    progress: bool = False,
) -> dict[str, WeightQuant]:
    """GPTQ weight-only quantization, layer after layer in execution order, each on the inputs that the layers
    quantized before it produce.

    For layer $\\ell$ with input rows $\\hat X_\\ell$ (:func:`quantref.nn.input_rows` of its captured input, in the
    model whose earlier layers already hold their quantized kernels), :func:`quantref.gptq.gptq` rounds the kernel
    on the :func:`group_scales` grid with the Hessian $H = 2 \\hat X_\\ell^\\top \\hat X_\\ell$.

    References:
      Frantar et al., arXiv:2210.17323, 2022, Algorithm 1 and sec. 5 (the sequential order; act-order is the
      reference implementation's ``--act-order``, with static groups).

    Args:
      model: the float model.
      batches: calibration inputs, a sequence of batches the model takes.
      fmt: the signed weight grid, as in :func:`rtn_weights`.
      group_size: rows per group, or ``None`` per output channel.
      act_order: round the rows with the largest $H_{ii}$ first.
      damping: the fraction of the mean diagonal added to $H$.
      block_size: rows per lazy block.
      select: path patterns of the layers.
      skip: path patterns to leave in float.
      progress: show a tqdm bar over the layers.

    Returns:
      ``{path: WeightQuant}``.

    Raises:
      ValueError: as :func:`rtn_weights`, if ``batches`` is empty, or if a layer's calibration inputs hold NaN or
        infinity.
    """
    if len(batches) == 0:
        raise ValueError("batches must hold at least one batch")
    fmt = _check_format(fmt)
    kernels = _kernels(model, select, skip)
    network = nn.trace(model, _as_input(batches[0]))
    order = tuple(path for path in network.layer_steps() if path in kernels)
    current = nnx.clone(model)
    result: dict[str, WeightQuant] = {}
    for path in tqdm(order, desc="GPTQ", unit="layer", disable=not progress):
        _check_kernel(path, kernels[path], group_size)
        gram = _input_gram(current, order, path, batches)
        _validate.check_finite(gram, f"the calibration inputs of {path!r} (their X^T X)")
        scale = _compiled_group_scales(kernels[path], fmt, group_size)
        codes = gptq.gptq(
            kernels[path], 2.0 * gram, scale, fmt, block_size=block_size, damping=damping, act_order=act_order
        )
        result[path] = WeightQuant(jnp.asarray(codes, jnp.int8), scale, fmt)
        # The next layers see this layer's quantized output (the copy keeps its structure: one compiled capture).
        layer = nn.get_module(current, path)
        layer = layer.layer if isinstance(layer, nn.QuantLayer) else layer
        layer.kernel[...] = result[path].dequantize().astype(layer.kernel[...].dtype)
    return result


def fake_quant_model(model: nnx.Module, weights: dict[str, WeightQuant]) -> nnx.Module:
    """A copy of ``model`` whose quantized layers compute with their stored integer kernels.

    Each layer in ``weights`` is swapped (:func:`quantref.nn.swap_layers`) for a :class:`quantref.nn.QuantLayer`
    holding the dequantized kernel $s \\odot q$ and a :class:`GroupFakeQuant` weight quantizer with the stored
    scales (and row scales), which rounds that kernel back to exactly $q$: the layer computes with the stored
    codes. (For round-to-nearest the float kernel would do as well — the quantizer rounds it to the same codes.)

    Args:
      model: the float model the weights were computed from.
      weights: ``{path: WeightQuant}`` from :func:`rtn_weights`, :func:`gptq_weights` or :func:`quantref.scaling.awq`.

    Returns:
      The fake-quant model; call it as the original.
    """

    def wrap(path: str, layer: nnx.Module) -> nn.QuantLayer | None:
        if path not in weights:
            return None
        quant = weights[path]
        inner = layer.layer if isinstance(layer, nn.QuantLayer) else layer
        inner.kernel[...] = quant._replace(row_scale=None).dequantize().astype(inner.kernel[...].dtype)
        return nn.QuantLayer(inner, weight_quantizer=GroupFakeQuant(quant.scale, quant.fmt, quant.row_scale))

    return nn.swap_layers(model, wrap)


def dequantized_model(model: nnx.Module, weights: dict[str, WeightQuant]) -> nnx.Module:
    """A copy of ``model`` with each quantized layer's kernel replaced by $s \\odot q$ (with
    :func:`quantref.nn.map_kernels`).

    It computes exactly what :func:`fake_quant_model` computes — the weight quantizer there maps $s \\odot q$ to
    itself — with the float model's structure, so a compiled forward pass is reused across configurations.
    """
    return nn.map_kernels(model, lambda path, kernel: weights[path].dequantize() if path in weights else kernel)


# --- bytes on disk -----------------------------------------------------------------------------------------------


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Packs integer codes into a little-endian bit stream: code $i$ occupies bits $[b\\,i,\\ b\\,(i+1))$.

    For ``bits`` of 1, 2 and 4 this is :func:`quantref.formats.pack_int`'s layout (low bits first); for 3 bits,
    8 codes fill 3 bytes. Signed codes are stored two's complement in ``bits`` bits.

    Args:
      codes: integer codes that fit in ``bits`` bits, any shape (flattened in C order).
      bits: 1..8.

    Returns:
      ``ceil(size * bits / 8)`` ``uint8`` bytes.

    Raises:
      ValueError: for ``bits`` outside 1..8 or a code that does not fit.
      TypeError: for non-integer codes.
    """
    codes = np.asarray(codes)
    bits = _check_bits(bits)
    if codes.dtype.kind not in "iu":
        raise TypeError(f"codes must be integers, got dtype {codes.dtype}")
    if codes.size and (codes.min() < -(1 << (bits - 1)) or codes.max() > (1 << bits) - 1):
        raise ValueError(f"codes must fit in {bits} bits, got values in [{codes.min()}, {codes.max()}]")
    fields = codes.reshape(-1).astype(np.int64) & ((1 << bits) - 1)
    stream = ((fields[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(stream, bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, count: int, *, signed: bool = True) -> np.ndarray:
    """Reads ``count`` codes back from :func:`pack_bits`'s stream.

    Returns:
      ``int8`` (signed, sign-extended) or ``uint8`` codes, flat.

    Raises:
      ValueError: for ``bits`` outside 1..8 or a ``count`` the bytes do not hold.
    """
    bits = _check_bits(bits)
    packed = np.asarray(packed, np.uint8).reshape(-1)
    if not 0 <= count <= packed.size * 8 // bits:
        raise ValueError(f"count must be in 0..{packed.size * 8 // bits} for {packed.size} bytes, got {count}")
    stream = np.unpackbits(packed, bitorder="little")[: count * bits].reshape(count, bits).astype(np.int64)
    fields = (stream << np.arange(bits)).sum(axis=1)
    if signed:
        fields = np.where(fields >= 1 << (bits - 1), fields - (1 << bits), fields)
        return fields.astype(np.int8)
    return fields.astype(np.uint8)


def save_packed(path: str | os.PathLike, model: nnx.Module, weights: dict[str, WeightQuant]) -> int:
    """Writes a weight-only quantized model as a safetensors file and returns its size in bytes.

    Each quantized layer stores ``<path>.codes`` (the kernel's codes, :func:`pack_bits`-packed, ``U8``),
    ``<path>.scale`` (``F16``) and, if it has one, ``<path>.row_scale`` (``F16``); every other parameter of
    ``model`` (embeddings, LayerNorms, biases, layers left in float) is stored ``F32`` under its state path. The
    header records each layer's grid and kernel shape. The file is written atomically (a temporary file, then a
    rename).

    Args:
      path: the file to write.
      model: the float model the weights belong to.
      weights: ``{path: WeightQuant}``.

    Returns:
      The file's size in bytes.
    """
    tensors: dict[str, np.ndarray] = {}
    metadata: dict[str, str] = {}
    for key, value in _float_parameters(model, weights).items():
        tensors[key] = value.astype(np.float32)
    for layer, quant in weights.items():
        codes = np.asarray(quant.codes)
        tensors[f"{layer}.codes"] = pack_bits(codes, quant.fmt.bits)
        tensors[f"{layer}.scale"] = np.asarray(quant.scale).astype(SCALE_DTYPE)
        if quant.row_scale is not None:
            tensors[f"{layer}.row_scale"] = np.asarray(quant.row_scale).astype(SCALE_DTYPE)
        grid = {"bits": quant.fmt.bits, "narrow_range": quant.fmt.narrow_range, "shape": list(codes.shape)}
        metadata[layer] = json.dumps(grid)
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with temporary.open("xb") as handle:
            _write_safetensors(handle, tensors, metadata)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target.stat().st_size


def load_packed(path: str | os.PathLike, model: nnx.Module) -> dict[str, WeightQuant]:
    """Reads a file written by :func:`save_packed`: sets ``model``'s float parameters (in place) and returns the
    quantized layers' weights (put them in with :func:`fake_quant_model`).

    Args:
      path: the file.
      model: a model of the same architecture.

    Returns:
      ``{path: WeightQuant}``.

    Raises:
      ValueError: if the file is not a safetensors file of this layout, or misses one of the model's parameters.
    """
    tensors, metadata = _read_safetensors(Path(path))
    weights = {}
    for layer, entry in metadata.items():
        info = json.loads(entry)
        count = int(np.prod(info["shape"]))
        codes = unpack_bits(tensors[f"{layer}.codes"], info["bits"], count).reshape(info["shape"])
        scale = jnp.asarray(tensors[f"{layer}.scale"].astype(np.float32))
        fmt = formats.int_format(int(info["bits"]), narrow_range=bool(info["narrow_range"]))
        row_scale = tensors.get(f"{layer}.row_scale")
        row_scale = None if row_scale is None else jnp.asarray(row_scale.astype(np.float32))
        weights[layer] = WeightQuant(jnp.asarray(codes), scale, fmt, row_scale)
    for key, variable in _float_variables(model, weights).items():
        if key not in tensors:
            raise ValueError(f"{path}: parameter {key} is missing")
        variable[...] = jnp.asarray(tensors[key])
    return weights


# --- helpers -----------------------------------------------------------------------------------------------------


def _check_kernel(path: str, kernel: jax.Array, group_size: int | None) -> None:
    """A layer's kernel before it is rounded: the group size divides its rows, and it holds no NaN or infinity."""
    _check_group_size(group_size, kernel.shape[0])
    _validate.check_finite(kernel, f"the kernel of {path!r}")


def _check_group_size(group_size: int | None, rows: int) -> None:
    if group_size is None:
        return
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"group_size must be a positive int or None, got {group_size!r}")
    if rows % group_size:
        raise ValueError(f"group_size {group_size} must divide the kernel's {rows} rows")


def grid_bounds(fmt: formats.IntFormat) -> jax.Array:
    """A signed grid as an array, for compiled code that takes the grid as an argument rather than as a static
    format (one compilation per kernel shape then serves every bit width).

    Args:
      fmt: the signed weight grid, 2 to 8 bits.

    Returns:
      float32 ``[q_min, q_max, (q_max - q_min) / 2]``.

    Raises:
      ValueError: for a grid that is not signed with 2 to 8 bits.
    """
    fmt = _check_format(fmt)
    return jnp.asarray([fmt.qmin, fmt.qmax, (fmt.qmax - fmt.qmin) / 2], jnp.float32)


def grid_scales(kernel: jax.Array, bounds: jax.Array, group_size: int | None) -> jax.Array:
    """:func:`group_scales` with the grid given by :func:`grid_bounds`: traceable, with no checks of its own.

    $$
    s = \\operatorname{fp16}\\Big(\\max\\big(\\max|W| \\big/ \\tfrac{q_{max} - q_{min}}{2},\\ \\epsilon\\big)\\Big),
    $$

    floored at float16's smallest normal number: the same numbers as :func:`group_scales`.

    Args:
      kernel: ``(in, out)`` float kernel.
      bounds: :func:`grid_bounds` of the grid.
      group_size: rows per group (dividing ``in``), or ``None`` per output channel.

    Returns:
      ``(out,)`` or ``(in // group_size, out)`` float32 scales, each a float16 number.
    """
    rows, columns = kernel.shape
    magnitude = jnp.abs(kernel)
    if group_size is None:
        absmax = magnitude.max(axis=0)
    else:
        absmax = magnitude.reshape(rows // group_size, group_size, columns).max(axis=1)
    scale = jnp.maximum(affine.true_divide(absmax, bounds[2]), np.finfo(np.float32).eps)
    return jnp.maximum(scale, _SMALLEST_SCALE).astype(SCALE_DTYPE).astype(jnp.float32)


def grid_round(kernel: jax.Array, scale: jax.Array, bounds: jax.Array) -> jax.Array:
    """The codes of :func:`quantize_kernel`, as floats, with the grid given by :func:`grid_bounds` (traceable):
    $\\operatorname{clamp}(\\operatorname{rne}(W / s), q_{min}, q_{max})$.

    Args:
      kernel: ``(in, out)`` float kernel.
      scale: ``(out,)`` or ``(groups, out)`` scales.
      bounds: :func:`grid_bounds` of the grid.

    Returns:
      ``(in, out)`` float32 codes.
    """
    scales = gptq.row_scales(scale, *kernel.shape)
    return jnp.clip(jnp.round(affine.true_divide(kernel, scales)), bounds[0], bounds[1])


@functools.partial(jax.jit, static_argnums=(2,))
def _round_kernel(kernel: jax.Array, bounds: jax.Array, group_size: int | None) -> tuple[jax.Array, jax.Array]:
    # One compiled call per kernel shape and group size, for every grid (eagerly, each of a dozen small operations
    # compiles on its own, for every grid).
    scale = grid_scales(kernel, bounds, group_size)
    return grid_round(kernel, scale, bounds).astype(jnp.int8), scale


#: group_scales as one compiled call per kernel shape, grid and group size.
_compiled_group_scales = jax.jit(group_scales, static_argnums=(1, 2))


@jax.jit
def _dequantize(codes: jax.Array, scale: jax.Array, row_scale: jax.Array | None) -> jax.Array:
    kernel = codes.astype(jnp.float32) * gptq.row_scales(scale, *codes.shape)
    return kernel if row_scale is None else kernel / jnp.asarray(row_scale, jnp.float32)[:, None]


def _granularity(scale: jax.Array, rows: int) -> tuple[int, int | None]:
    """``(axis, block_size)`` of :func:`quantref.affine.fake_quant` for a scale shape."""
    if scale.ndim == 2:
        return 0, rows // scale.shape[0]
    return -1, None


def _as_input(batch: jax.Array | np.ndarray) -> jax.Array:
    # The pipeline takes float inputs (quantref.nn.check_input); a language model's token ids go in as floats, which
    # float32 holds exactly below 2**24, and the model casts them back.
    return jnp.asarray(batch, jnp.float32)


def _check_format(fmt: formats.IntFormat) -> formats.IntFormat:
    formats.check_format(fmt)
    if not fmt.signed or not 2 <= fmt.bits <= 8:
        raise ValueError(f"fmt must be a signed grid of 2 to 8 bits, got {fmt.name}")
    return fmt


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an int in 1..8, got {bits!r}")
    return int(bits)


def _kernels(model: nnx.Module, select, skip) -> dict[str, jax.Array]:
    kernels = {}
    for path, layer in nn.find_layers(model, select, skip).items():
        inner = layer.layer if isinstance(layer, nn.QuantLayer) else layer
        if not isinstance(inner, nnx.Linear):
            raise ValueError(f"weight-only quantization takes nnx.Linear layers; {path} is {type(inner).__name__}")
        kernels[path] = jnp.asarray(inner.kernel[...], jnp.float32)
    if not kernels:
        raise ValueError("the model has no linear layer to quantize (check select/skip)")
    return kernels


@jax.jit
def _gram(rows: jax.Array) -> jax.Array:
    rows = rows.astype(jnp.float32)
    return rows.T @ rows


def _input_gram(model: nnx.Module, paths: tuple[str, ...], path: str, batches: Sequence) -> jax.Array:
    """$X^\\top X$ of one layer's input rows over the batches. The capture records every layer of ``paths``, so it
    is compiled once for all of them (the model keeps its structure from layer to layer), not once per layer."""
    layer = nn.get_module(model, path)
    total = 0.0
    for batch in batches:
        _, activations = nn.capture_jit(model, _as_input(batch), select=list(paths))
        total = total + _gram(nn.input_rows(layer, activations[f"{path}.input"]))
    return total


def _state_key(path: tuple) -> str:
    return ".".join(str(part) for part in path)


def _float_variables(model: nnx.Module, weights: dict[str, WeightQuant]) -> dict[str, nnx.Variable]:
    """The model's parameters other than the quantized kernels, keyed ``"blocks.0.ln1.scale"``."""
    quantized = {f"{layer}.kernel" for layer in weights}
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {_state_key(path): variable for path, variable in flat if _state_key(path) not in quantized}


def _float_parameters(model: nnx.Module, weights: dict[str, WeightQuant]) -> dict[str, np.ndarray]:
    return {key: np.asarray(variable[...]) for key, variable in _float_variables(model, weights).items()}


_SAFETENSORS_DTYPES: dict[str, str] = {"float32": "F32", "float16": "F16", "uint8": "U8", "int8": "I8"}
_NUMPY_DTYPES: dict[str, np.dtype] = {code: np.dtype(name) for name, code in _SAFETENSORS_DTYPES.items()}


def _write_safetensors(handle, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """The safetensors layout: an 8-byte little-endian header length, a JSON header of dtypes, shapes and byte
    offsets (and ``__metadata__``), then the tensors' little-endian bytes back to back."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[array.dtype.name],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data to 8 bytes
    handle.write(len(encoded).to_bytes(8, "little"))
    handle.write(encoded)
    for name in sorted(tensors):
        handle.write(np.ascontiguousarray(tensors[name]).astype(tensors[name].dtype.newbyteorder("<")).tobytes())


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path} is not a safetensors file")
    length = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + length])
    except ValueError as error:
        raise ValueError(f"{path} is not a safetensors file: {error}") from None
    metadata = header.pop("__metadata__", {})
    body = memoryview(data)[8 + length :]
    tensors = {}
    for name, entry in header.items():
        start, stop = entry["data_offsets"]
        dtype = _NUMPY_DTYPES[entry["dtype"]].newbyteorder("<")
        tensors[name] = np.frombuffer(body[start:stop], dtype).reshape(entry["shape"]).copy()
    return tensors, metadata
