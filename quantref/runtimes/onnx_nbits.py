"""onnxruntime's ``com.microsoft.MatMulNBits`` with ``accuracy_level=4``, bit for bit with its AVX512-VNNI kernel.

MatMulNBits multiplies float activations by block-quantized 4- or 8-bit weights. With ``accuracy_level=4``
(onnxruntime's MLAS "CompInt8" path, and what the optimiser writes when it rewrites a DequantizeLinear'd weight
feeding a float MatMul or Gemm: see :mod:`quantref.runtimes.onnx_qdq`) it quantizes the *activations* too, to int8
per row and block of ``K``, and multiplies integers. With block length ``L = 32``, ``B`` blocks along ``K`` (``K``
padded with zeros to ``32 B``), weight codes ``w`` (unsigned: 0..255 or 0..15), scales ``s_w`` and zero points
``z_w`` per column and block, each row of ``A`` and each block ``b``:

$$m_b = \\max_k |a_k|,\\quad s_{a,b} = f_{32}(m_b / 127),\\quad
  q_k = \\mathrm{rne}(f_{32}(a_k \\cdot f_{32}(127 / m_b)))$$

($q = 0$ where $m_b = 0$). Each block's dot product is split into eight int32 *lanes* of four consecutive ``k``,
$d_{b,j} = \\sum_{k=4j}^{4j+3} q_k w_k$ (the raw codes: the zero point comes later), and the float steps are the
kernel's, every product-sum a fused multiply-add ($\\mathrm{fma}$, one rounding) and $c_b = f_{32}(s_{a,b} s_{w,b})$:

1. Blocks ``4g .. 4g+3`` (``g < ⌊B/4⌋``) go into 16 float lanes at once, each the pair sum of two int32 lanes:
   lane ``4h + i`` of group ``h = 0..3`` holds block ``4g + (h ≥ 2) + 2·(i ≥ 2)``'s
   $d_{j} + d_{j+2}$ with $j = 4 (h \\bmod 2) + (i \\bmod 2)$, and accumulates
   $\\mathrm{fma}(f_{32}(\\cdot), c, \\cdot)$.
2. The 16 lanes fold to 8 ($x_j = \\ell_j + \\ell_{j+8}$), and each remaining block ``b ≥ 4⌊B/4⌋`` adds
   $x_j \\leftarrow \\mathrm{fma}(f_{32}(d_{b,j}), c_b, x_j)$.
3. The 8 lanes are summed: for the columns in whole groups of four (``n < 4⌊N/4⌋``) as
   $((x_0 + x_1) + x_2) + x_3 + (((x_4 + x_5) + x_6) + x_7)$; for the last ``N mod 4`` columns as
   $((x_0 + x_4) + (x_2 + x_6)) + ((x_1 + x_5) + (x_3 + x_7))$. The bias, if any, is added:
   $y = f_{32}(\\cdot + \\beta)$.
4. The zero points: with $\\sigma_b = f_{32}(s_{a,b} \\cdot \\sum_k q_k)$ and $\\tau_b = -f_{32}(s_{w,b} z_{w,b})$,
   $t = \\mathrm{fma}(\\sigma_{B-1}, \\tau_{B-1}, \\ldots \\mathrm{fma}(\\sigma_0, \\tau_0, 0))$ (an SGEMM over the
   blocks) and
   $y \\leftarrow f_{32}(y + t)$.

NaN activations follow MLAS's ``vmaxps`` steps (which return their second operand when either is NaN): the
block's two halves of 16 lanes are folded (only the first half in a last block of at most 16 values), then the 16
lanes in halves down to one; so a NaN is skipped, or knocks out the value it was compared with, or reaches
$m_b$ (the row is then NaN), depending on its position. A NaN's code is 0 (``cvtps2dq``'s $-2^{31}$, truncated to 8
bits by ``vpmovdb``), as is any product that leaves int32; codes above 127 (a value whose comparison a NaN won) wrap
to 8 bits. An infinity makes its row NaN, as in onnxruntime.

Checked bit for bit against onnxruntime 1.32's session on an AVX512-VNNI CPU (``tests/test_matmul_nbits.py``: 4 and
8 bits, random shapes, ``K`` not a multiple of 32, every ``N mod 4``, all-zero blocks, ties, one or several
threads). Other machines run other MLAS kernels (AVX2, AVX512 without VNNI, ARM), whose lanes and sums differ; so do
other block lengths (16, 64, 128), 2-bit weights, float zero points, ``g_idx`` and the other accuracy levels, which
are not reproduced here (the operator raises).

References:
  onnxruntime ``contrib_ops/cpu/quantization/matmul_nbits.cc``; ``core/mlas/lib/qnbitgemm.cpp``,
  ``sqnbitgemm_kernel_avx512vnni.cpp``, ``sqnbitgemm_kernel_avx512_int8_blklen32.h`` (the lane layout) and
  ``QuantizeARow_CompInt8_avx512``; the operator's schema in ``docs/ContribOperators.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from quantref._validate import is_concrete
from quantref.affine import true_divide
from quantref.runtimes import _arith

__all__ = ["BLOCK", "check_weight_shapes", "matmul_nbits", "matmul_nbits_op", "nbits_attributes", "pack_weights"]

BLOCK = 32
#: The end of the error for MatMulNBits weights that are not constants (after the inputs' names).
WEIGHTS_NOT_CONSTANT = (
    "must be constant initializers (not graph inputs): run_model reproduces only the kernel onnxruntime runs on "
    "prepacked constant weights"
)
_LANES = 8
# Step 1's 16 lanes: (block within the group of four, int32 lane j) whose d_j + d_{j+2} each float lane holds.
_GROUP_LANES = tuple(
    (int(h >= 2) + 2 * int(i >= 2), 4 * (h % 2) + (i % 2)) for h in range(4) for i in range(4)
)  # fmt: skip


def _vmax(x: jax.Array, y: jax.Array) -> jax.Array:
    """``vmaxps``: ``x`` where ``x > y``, else ``y`` — so ``y`` whenever either is NaN."""
    return jnp.where(x > y, x, y)


def _block_amax(magnitudes: jax.Array, last: int) -> jax.Array:
    """MLAS's per-block maximum of ``|a|`` (``[..., B, 32]`` → ``[..., B]``), NaNs included as its ``vmaxps``
    steps treat them: the two halves of 16 lanes (one, the first, in a last block of ``last`` ≤ 16 values), then
    the 256-, 128-, 64- and 32-bit folds of ``_mm512_reduce_max_ps``."""
    lanes = _vmax(magnitudes[..., :16], magnitudes[..., 16:])
    if last <= 16:
        lanes = lanes.at[..., -1, :].set(magnitudes[..., -1, :16])
    lanes = _vmax(lanes[..., 8:], lanes[..., :8])
    lanes = _vmax(lanes[..., 4:], lanes[..., :4])
    lanes = _vmax(lanes, lanes[..., [2, 3, 0, 1]])
    return _vmax(lanes, lanes[..., [1, 0, 3, 2]])[..., 0]


def _quantize_activations(a: jax.Array, last: int = BLOCK) -> tuple[jax.Array, jax.Array]:
    """Per row and block of 32: int8 codes ``[M, B, 32]`` (int32) and scales ``[M, B]`` (see the module docstring).

    ``last`` is the number of values in the last block (the rest is padding). Without NaNs this is
    $m_b = \\max_k |a_k|$ and $q_k = \\mathrm{rne}(f_{32}(a_k \\cdot f_{32}(127 / m_b)))$; a NaN goes through
    :func:`_block_amax`, its code (and any that leaves int32) is $-2^{31}$, and codes are truncated to 8 bits as
    ``vpmovdb`` does (a NaN's code is 0).
    """
    amax = _block_amax(jnp.abs(a), last)
    # true_divide: XLA would turn a division by a constant into a multiplication by its (rounded) reciprocal.
    scale = true_divide(amax, jnp.float32(127))
    inverse = true_divide(jnp.full_like(amax, 127), jnp.where(amax != 0, amax, 1))
    inverse = jnp.where(amax != 0, inverse, jnp.float32(0))
    rounded = jnp.round(a * inverse[..., None])
    fits = jnp.abs(rounded) < jnp.float32(2**31)  # False for NaN: cvtps2dq's -2^31, whose low byte is 0
    codes = jnp.where(fits, rounded, jnp.float32(0)).astype(jnp.int32)
    return ((codes + 128) & 255) - 128, scale


def matmul_nbits(
    a: jax.Array,
    codes: jax.Array,
    scales: jax.Array,
    zero_points: jax.Array,
    bias: jax.Array | None = None,
) -> jax.Array:
    """MLAS's CompInt8 MatMulNBits (block length 32, AVX512-VNNI), from unpacked weights.

    $y = A \\cdot ((W - z_w) s_w)^T$ computed as the module docstring spells out: activations quantized to int8 per
    row and block, int32 lane sums, fused multiply-adds in the kernel's order, zero points through block sums.

    References:
      onnxruntime ``core/mlas/lib/qnbitgemm.cpp`` and ``sqnbitgemm_kernel_avx512_int8_blklen32.h``.

    Args:
      a: float32 activations ``[..., K]``.
      codes: the weights' unsigned codes ``[N, 32 B]`` (``B = ⌈K / 32⌉``; what lies past ``K`` is not read).
      scales: float32 ``[N, B]``.
      zero_points: integer ``[N, B]``.
      bias: optional float32 ``[N]``.

    Returns:
      float32 ``[..., N]``.
    """
    a = jnp.asarray(a, jnp.float32)
    k = a.shape[-1]
    n, padded = codes.shape
    blocks = padded // BLOCK
    rows = a.reshape(-1, k)
    m = rows.shape[0]
    rows = jnp.pad(rows, ((0, 0), (0, padded - k))).reshape(m, blocks, BLOCK)
    q_a, s_a = _quantize_activations(rows, k - BLOCK * (blocks - 1))
    w = jnp.asarray(codes, jnp.int32).at[:, k:].set(0).reshape(n, blocks, _LANES, BLOCK // _LANES)
    s_w = jnp.asarray(scales, jnp.float32)
    lanes_a = q_a.reshape(m, blocks, _LANES, BLOCK // _LANES)
    combined = s_a[:, None, :] * s_w[None, :, :]  # [M, N, B]

    def dots(first: int, count: int) -> jax.Array:  # [M, N, count, 8] int32 lane sums
        return jnp.einsum(
            "mbjk,nbjk->mnbj",
            lanes_a[:, first : first + count],
            w[:, first : first + count],
            preferred_element_type=jnp.int32,
        )

    groups = blocks // 4
    acc = jnp.zeros((m, n, 16), jnp.float32)
    if groups:
        lane_block = np.array([block for block, _ in _GROUP_LANES])
        lane_j = np.array([j for _, j in _GROUP_LANES])

        def step(acc, g):
            d = jax.lax.dynamic_slice_in_dim(lanes_a, 4 * g, 4, axis=1)
            e = jax.lax.dynamic_slice_in_dim(w, 4 * g, 4, axis=1)
            lanes = jnp.einsum("mbjk,nbjk->mnbj", d, e, preferred_element_type=jnp.int32)
            pairs = lanes[:, :, lane_block, lane_j] + lanes[:, :, lane_block, lane_j + 2]
            c = jax.lax.dynamic_slice_in_dim(combined, 4 * g, 4, axis=2)[:, :, lane_block]
            return _arith.fma_f32(pairs.astype(jnp.float32), c, acc), None

        acc, _ = jax.lax.scan(step, acc, jnp.arange(groups))
    x = acc[..., :8] + acc[..., 8:]
    if blocks > 4 * groups:
        tail = dots(4 * groups, blocks - 4 * groups).astype(jnp.float32)
        for b in range(blocks - 4 * groups):
            x = _arith.fma_f32(tail[:, :, b], combined[:, :, 4 * groups + b, None], x)
    grouped = (((x[..., 0] + x[..., 1]) + x[..., 2]) + x[..., 3]) + (((x[..., 4] + x[..., 5]) + x[..., 6]) + x[..., 7])
    single = ((x[..., 0] + x[..., 4]) + (x[..., 2] + x[..., 6])) + ((x[..., 1] + x[..., 5]) + (x[..., 3] + x[..., 7]))
    y = jnp.where(np.arange(n) < n // 4 * 4, grouped, single)
    if bias is not None:
        y = y + jnp.asarray(bias, jnp.float32)
    sum_a = s_a * jnp.sum(q_a, axis=-1).astype(jnp.float32)  # [M, B]
    sum_w = -(s_w * jnp.asarray(zero_points, jnp.float32))  # [N, B]
    t = jnp.zeros((m, n), jnp.float32)
    for b in range(blocks):
        t = _arith.fma_f32(sum_a[:, None, b], sum_w[None, :, b], t)
    return (y + t).reshape(*a.shape[:-1], n)


def _unpack(packed: jax.Array, bits: int, count: int) -> jax.Array:
    """Little-endian ``bits``-bit fields of uint8 bytes along the last axis, the first ``count`` of them."""
    packed = jnp.asarray(packed, jnp.int32)
    per_byte = 8 // bits
    fields = [(packed >> (bits * i)) & ((1 << bits) - 1) for i in range(per_byte)]
    return jnp.stack(fields, axis=-1).reshape(*packed.shape[:-1], -1)[..., :count]


def nbits_attributes(attributes: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
    """``(K, N, bits, block_size, accuracy_level)`` of a MatMulNBits node, checked against what is reproduced.

    ``bits`` defaults to 4 and ``accuracy_level`` to 0, as in the operator's schema; ``K``, ``N`` and ``block_size``
    have no default.

    Args:
      attributes: the node's attributes.

    Returns:
      The five integers.

    Raises:
      ValueError: a required attribute missing, or a configuration whose kernel is not reproduced.
    """
    missing = [name for name in ("K", "N", "block_size") if name not in attributes]
    if missing:
        raise ValueError(f"MatMulNBits needs the attribute(s) {missing} (they have no default)")
    k, n = int(attributes["K"]), int(attributes["N"])
    bits, block = int(attributes.get("bits", 4)), int(attributes["block_size"])
    level = int(attributes.get("accuracy_level", 0))
    if bits not in (4, 8) or block != BLOCK or level != 4 or attributes.get("weight_prepacked", 0):
        raise ValueError(
            f"MatMulNBits is reproduced for bits 4 or 8, block_size 32, accuracy_level 4 (MLAS's AVX512-VNNI "
            f"CompInt8 kernel); got bits={bits}, block_size={block}, accuracy_level={level}"
        )
    if k < 1 or n < 1:
        raise ValueError(f"MatMulNBits: K and N must be positive, got K={k}, N={n}")
    return k, n, bits, block, level


def check_weight_shapes(
    attributes: Mapping[str, Any],
    b_shape: Sequence[int],
    scales_shape: Sequence[int],
    zero_points_shape: Sequence[int] | None = None,
) -> None:
    """Checks MatMulNBits' ``B``, ``scales`` and ``zero_points`` shapes as onnxruntime's PrePack does.

    With $n_b = \\lceil K / L \\rceil$ blocks of length $L$: ``B`` must be ``[N, n_b, L·bits/8]``, ``scales``
    ``[N·n_b]`` or ``[N, n_b]``, ``zero_points`` ``[N·⌈n_b·bits/8⌉]`` or ``[N, ⌈n_b·bits/8⌉]`` (onnxruntime refuses
    longer or shorter ones when it prepacks the constant weights).

    Args:
      attributes: the node's attributes (:func:`nbits_attributes`).
      b_shape: ``B``'s shape.
      scales_shape: ``scales``' shape.
      zero_points_shape: ``zero_points``' shape, or None when absent.

    Raises:
      ValueError: an input of another shape, naming it and the expected shape.
    """
    k, n, bits, block, _ = nbits_attributes(attributes)
    blocks = -(-k // block)
    expected_b = (n, blocks, block * bits // 8)
    if tuple(b_shape) != expected_b:
        raise ValueError(f"MatMulNBits: B has shape {tuple(b_shape)}; K={k}, N={n}, bits={bits} need {expected_b}")
    if tuple(scales_shape) not in ((n * blocks,), (n, blocks)):
        raise ValueError(
            f"MatMulNBits: scales has shape {tuple(scales_shape)}; K={k}, N={n} need ({n * blocks},) or ({n}, {blocks})"
        )
    per_row = -(-blocks * bits // 8)
    if zero_points_shape is not None and tuple(zero_points_shape) not in ((n * per_row,), (n, per_row)):
        raise ValueError(
            f"MatMulNBits: zero_points has shape {tuple(zero_points_shape)}; K={k}, N={n}, bits={bits} need "
            f"({n * per_row},) or ({n}, {per_row})"
        )


def matmul_nbits_op(inputs: Sequence[jax.Array | None], attributes: Mapping[str, Any]) -> jax.Array:
    """The ONNX operator: ``(A, B, scales[, zero_points[, g_idx[, bias]]])`` with MatMulNBits' packed layouts.

    ``B`` is ``[N, B, 32·bits/8]`` uint8 (fields little-endian within a byte), ``scales`` ``[N·B]`` float32,
    ``zero_points`` ``[N·⌈B·bits/8⌉]`` uint8 packed the same way (default $2^{\\text{bits}-1}$), ``bias`` ``[N]``.
    ``B``, ``scales`` and ``zero_points`` must be constants: onnxruntime prepacks constant weights, and its kernel
    for weights fed at run time (another code path) is not reproduced.

    Args:
      inputs: the node's inputs (``None`` for absent optional ones).
      attributes: ``K``, ``N``, ``bits`` (default 4), ``block_size``, ``accuracy_level``.

    Returns:
      float32 ``[..., N]``.

    Raises:
      ValueError: a configuration whose kernel is not reproduced (see the module docstring), a missing attribute,
        weights of the wrong shape or not constant.
      TypeError: float activations other than float32, or float zero points.
    """
    a, b, scales = inputs[:3]
    zero_points = inputs[3] if len(inputs) > 3 else None
    g_idx = inputs[4] if len(inputs) > 4 else None
    bias = inputs[5] if len(inputs) > 5 else None
    k, n, bits, block, _ = nbits_attributes(attributes)
    if g_idx is not None:
        raise ValueError("MatMulNBits with g_idx is not supported")
    weights = (("B", b), ("scales", scales), ("zero_points", zero_points))
    fed = [label for label, value in weights if value is not None and not is_concrete(value)]
    if fed:
        raise ValueError(f"MatMulNBits: {', '.join(fed)} {WEIGHTS_NOT_CONSTANT}")
    check_weight_shapes(attributes, b.shape, scales.shape, None if zero_points is None else zero_points.shape)
    if np.dtype(a.dtype) != np.float32:
        raise TypeError(f"MatMulNBits: A must be float32, got {np.dtype(a.dtype).name}")
    if a.shape[-1] != k:
        raise ValueError(f"MatMulNBits: A's last dimension {a.shape[-1]} is not K={k}")
    blocks = -(-k // block)
    codes = _unpack(jnp.asarray(b).reshape(n, blocks, -1), bits, block).reshape(n, blocks * block)
    scales = jnp.asarray(scales, jnp.float32).reshape(n, blocks)
    if zero_points is None:
        zero_points = jnp.full((n, blocks), 1 << (bits - 1), jnp.int32)
    elif np.dtype(zero_points.dtype) != np.uint8:
        raise TypeError(f"MatMulNBits: float zero points are not supported, got {np.dtype(zero_points.dtype).name}")
    else:
        zero_points = _unpack(jnp.asarray(zero_points).reshape(n, -1), bits, blocks)
    return matmul_nbits(a, codes, scales, zero_points, bias)


def pack_weights(
    codes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MatMulNBits' initializers for unsigned codes ``[K, N]`` with scales and zero points ``[B, N]`` (blocks of 32).

    Args:
      codes: unsigned weight codes ``[K, N]`` (0..255 or 0..15).
      scales: float32 ``[B, N]``.
      zero_points: unsigned ``[B, N]``.
      bits: 4 or 8.

    Returns:
      ``B`` ``[N, B, 32·bits/8]`` uint8, ``scales`` ``[N·B]`` float32 and ``zero_points`` uint8, as the operator
      reads them.
    """
    k, n = codes.shape
    blocks = scales.shape[0]
    padded = np.zeros((n, blocks * BLOCK), np.uint8)
    padded[:, :k] = codes.T
    zero_points = np.ascontiguousarray(zero_points.T).astype(np.uint8)
    if bits == 4:
        pairs = padded.reshape(n, blocks, BLOCK // 2, 2)
        packed = (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)
        zero_points = np.pad(zero_points, ((0, 0), (0, blocks % 2)))
        zero_points = (zero_points[:, 0::2] | (zero_points[:, 1::2] << 4)).astype(np.uint8)
    else:
        packed = padded.reshape(n, blocks, BLOCK)
    return packed, np.ascontiguousarray(scales.T, np.float32).reshape(-1), zero_points.reshape(-1)
