"""Deep Compression: pruning, k-means weight sharing and Huffman coding, down to a file of bytes.

Han et al. compress a network in three stages, each multiplying the savings of the one before:

1. **pruning** (:mod:`quantref.pruning`): most weights become zero, and only the survivors are stored, each with
   its distance from the previous survivor (a *relative index*) instead of its full position;
2. **weight sharing**: each layer's surviving weights are clustered into $K = 2^b$ values by k-means; a weight is
   stored as its $b$-bit cluster index, and the layer's $K$ centroids once. The centroids are then fine-tuned: since
   $W_i = c_{I_i}$, the gradient of a centroid is the sum of its members' gradients,
   $\\partial \\mathcal L / \\partial c_k = \\sum_{i:\\ I_i = k} \\partial \\mathcal L / \\partial W_i$,
   which is what automatic differentiation of the gather $W = c[I]$ computes (:class:`SharedWeights`);
3. **Huffman coding** (:mod:`quantref.coding`) of the cluster indices and of the relative indices, whose
   distributions are far from uniform.

The result is written to a file whose format is documented, versioned and checked on reading:

**File format, version 1** (``model.qrc``). All multi-byte header fields are little-endian.

- bytes 0–3: the magic ``b"QRDC"``;
- byte 4: the format version, ``1``;
- bytes 5–8: the payload length $P$ in bytes (uint32);
- bytes 9 … 8 + P: the payload, one bit stream, most significant bit first, zero-padded to a byte;
- the last 4 bytes: the CRC-32 (IEEE, as ``zlib.crc32``) of every byte before them (uint32).

The payload is a varint (LEB128, :class:`quantref.coding.BitWriter`) count of tensors, then per tensor: its name
(varint length, UTF-8 bytes), its rank and shape (varints), a 2-bit kind, and a body:

- kind 0 / 1, **dense** float32 / float16: every value's IEEE bits in C order;
- kind 2, **sparse**: 4 bits $b$ (1..15), a varint count of *gap symbols*, the gap stream, 1 bit value kind, and
  either every stored value as float32 bits (value kind 0) or a codebook (value kind 1: varint $K$, $K$ float32
  centroids, the stream of $K$-ary cluster indices). A gap symbol $g < 2^b - 1$ moves the position (C order,
  starting before 0) forward by $g + 1$ and stores one value there; the escape $2^b - 1$ moves it by $2^b - 1$
  and stores nothing — Han's filler, so that any gap fits the alphabet. Unstored positions are $+0.0$.
- a **stream** of symbols from an alphabet of $A$ is 1 bit coder, then either (0) each symbol in
  $\\lceil \\log_2 A \\rceil$ bits, or (1) a Huffman table — 3 bits $w$ and each symbol's code length in $w$ bits —
  and the symbols in the canonical code of those lengths (:func:`quantref.coding.canonical_codes`).

:func:`read_compressed` checks the magic, the version and the length (a truncated file), then the checksum (a
corrupted one: CRC-32 catches every error burst of up to 32 bits and all but one in $2^{32}$ of the others), then
every field against the bytes left, and raises a ``ValueError`` that says which — it never returns a model the
file does not hold.

References:
  Han, Mao and Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained Quantization and
  Huffman Coding", arXiv:1510.00149, 2016, sec. 2–4.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quantref import _files, coding, nn, pruning, train
from quantref._validate import as_array, check_bool, check_choice, check_int

__all__ = [
    "MAGIC",
    "VERSION",
    "FILE_NAME",
    "Centroids",
    "ClusterIndex",
    "SharedWeights",
    "kmeans_1d",
    "share_weights",
    "DenseTensor",
    "SparseTensor",
    "CompressedModel",
    "compress",
    "decompress",
    "load_compressed",
    "encode",
    "decode",
    "write_compressed",
    "read_compressed",
    "DeepCompressionConfig",
    "DeepCompression",
    "deep_compression",
]

MAGIC = b"QRDC"
VERSION = 1
FILE_NAME = "model.qrc"


# --- weight sharing ----------------------------------------------------------------------------------------------


class Centroids(nnx.Param):
    """A layer's shared weight values (its codebook): the only parameters centroid fine-tuning trains."""


class ClusterIndex(nnx.Variable):
    """Each weight's cluster (``-1``: pruned, always zero); fixed during centroid fine-tuning."""


class SharedWeights(nnx.Module):
    """A weight "quantizer" for :class:`quantref.nn.QuantLayer` that replaces the kernel by shared values.

    $$
    W_i = \\begin{cases} c_{I_i} & I_i \\ge 0 \\\\ 0 & I_i = -1 \\ \\text{(pruned)} \\end{cases}
    $$

    The float kernel the wrapper passes in is ignored. The gradient of the loss with respect to $c_k$ is the sum of
    the gradients of the weights in cluster $k$ (the transpose of a gather is a scatter-add).

    Attributes:
      centroids: ``(K,)`` float32 :class:`Centroids`.
      indices: int32 :class:`ClusterIndex`, shaped like the kernel.
    """

    def __init__(self, centroids: jax.Array | np.ndarray, indices: jax.Array | np.ndarray):
        self.centroids = Centroids(jnp.asarray(centroids, jnp.float32))
        self.indices = ClusterIndex(jnp.asarray(indices, jnp.int32))

    def __call__(self, kernel: jax.Array) -> jax.Array:
        indices = self.indices[...]
        shared = self.centroids[...][jnp.maximum(indices, 0)]
        return jnp.where(indices >= 0, shared, jnp.zeros_like(shared)).astype(kernel.dtype)


def kmeans_1d(values: np.ndarray, clusters: int, *, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means of scalars, from Han's *linear* initialisation.

    The centroids start evenly spaced over $[\\min w, \\max w]$ — which, unlike random or density-based starts,
    keeps centroids on the few large weights that matter most — and then alternate: each value joins its nearest
    centroid (the lower one on a tie), each centroid moves to its members' mean (an empty cluster stays put), until
    no assignment changes or ``iterations`` run out. ``iterations=0`` is plain linear (uniform) quantization between
    the extremes. In one dimension the centroids stay sorted, so the nearest one is found by bisection.

    References:
      Han et al., arXiv:1510.00149, 2016, sec. 3.1–3.2; Lloyd, IEEE Trans. Inf. Theory 28(2), 1982.

    Args:
      values: the weights to cluster (any shape; flattened).
      clusters: $K \\ge 1$.
      iterations: the most Lloyd iterations.

    Returns:
      ``(centroids, assignment)``: ``(K,)`` float32 ascending, and each value's cluster (int32, flattened).

    Raises:
      ValueError: if ``values`` is empty or not finite, or ``clusters`` < 1.
    """
    clusters = check_int(clusters, "clusters", low=1)
    iterations = check_int(iterations, "iterations", low=0)
    values = as_array(values, "values")
    if values.dtype.kind not in "iuf":
        raise TypeError(f"values must be a real array, got dtype {values.dtype}")
    values = np.asarray(values, np.float64).ravel()
    if not len(values) or not np.all(np.isfinite(values)):
        raise ValueError(f"values must be a non-empty finite array, got {len(values)} values")
    centroids = np.linspace(values.min(), values.max(), clusters)
    assignment = _nearest(values, centroids)
    for _ in range(iterations):
        sums = np.bincount(assignment, weights=values, minlength=clusters)
        counts = np.bincount(assignment, minlength=clusters)
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        new = _nearest(values, centroids)
        if np.array_equal(new, assignment):
            break
        assignment = new
    return centroids.astype(np.float32), assignment.astype(np.int32)


def _nearest(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(midpoints, values, side="left")


def share_weights(
    model: nnx.Module,
    bits: int | Mapping[str, int],
    *,
    iterations: int = 50,
    select: str | Sequence[str] | None = None,
    skip: str | Sequence[str] | None = None,
) -> nnx.Module:
    """A copy of the model whose selected layers share $2^b$ weight values each (k-means of the non-zero weights).

    Zeros (pruned weights) are left out of the clustering and stay exactly zero. Each layer becomes a
    :class:`quantref.nn.QuantLayer` with a :class:`SharedWeights` weight quantizer; fine-tune the centroids with
    ``pruning.fine_tune(model, x, y, config, wrt=Centroids)``.

    Args:
      model: an NNX model of plain conv and dense layers (e.g. pruned, BatchNorm folded).
      bits: $b$ for every selected layer, or ``{path: b}`` (paths not listed keep their float weights).
      iterations: Lloyd iterations (0: a uniform grid between the extremes).
      select: path patterns of the layers to share.
      skip: path patterns to leave as they are.

    Returns:
      The copy.

    Raises:
      ValueError: for ``bits`` outside 1..8, a path that is not a selected layer, or a layer with no non-zero weight.
    """
    layers = nn.find_layers(model, select, skip)
    per_layer = dict(bits) if isinstance(bits, Mapping) else dict.fromkeys(layers, bits)
    unknown = sorted(set(per_layer) - set(layers))
    if unknown:
        raise ValueError(f"bits names paths that are not selected layers: {unknown}; layers: {list(layers)}")
    per_layer = {path: check_int(value, f"bits[{path!r}]", low=1, high=8) for path, value in per_layer.items()}

    def wrap(path: str, layer: nnx.Module) -> nnx.Module | None:
        if path not in per_layer:
            return None
        if isinstance(layer, nn.QuantLayer):
            raise ValueError(f"layer {path!r} is already wrapped; share the weights of a plain model")
        kernel = np.asarray(layer.kernel[...])
        kept = kernel != 0
        if not kept.any():
            raise ValueError(f"layer {path!r} has no non-zero weight to share")
        centroids, assignment = kmeans_1d(kernel[kept], 2 ** per_layer[path], iterations=iterations)
        indices = np.full(kernel.shape, -1, np.int32)
        indices[kept] = assignment
        return nn.QuantLayer(layer, weight_quantizer=SharedWeights(centroids, indices))

    return nn.swap_layers(model, wrap)


# --- the compressed model ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DenseTensor:
    """Every value, as float32 or float16 (``values.dtype``)."""

    values: np.ndarray


@dataclasses.dataclass(frozen=True)
class SparseTensor:
    """The non-zero positions of a tensor and their values — raw float32, or a codebook and cluster indices.

    Attributes:
      shape: the tensor's shape.
      positions: ``(nnz,)`` ascending flat (C-order) positions of the stored values.
      values: ``(nnz,)`` float32, or ``None`` with a codebook.
      centroids: ``(K,)`` float32, or ``None``.
      indices: ``(nnz,)`` cluster indices in ``0..K-1``, or ``None``.
    """

    shape: tuple[int, ...]
    positions: np.ndarray
    values: np.ndarray | None = None
    centroids: np.ndarray | None = None
    indices: np.ndarray | None = None

    def __post_init__(self) -> None:
        # One dtype per field, so that a tensor read back from a file equals the one written, array for array.
        for name, dtype in (("positions", np.int64), ("values", np.float32), ("centroids", np.float32)):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, np.asarray(getattr(self, name), dtype))
        if self.indices is not None:
            object.__setattr__(self, "indices", np.asarray(self.indices, np.int64))
        object.__setattr__(self, "shape", tuple(int(size) for size in self.shape))

    def dense(self) -> np.ndarray:
        """The tensor, float32, ``+0.0`` where nothing is stored."""
        stored = self.values if self.values is not None else self.centroids[self.indices]
        out = np.zeros(int(np.prod(self.shape)), np.float32)
        out[self.positions] = stored
        return out.reshape(self.shape)


@dataclasses.dataclass(frozen=True)
class CompressedModel:
    """A model's tensors by name (``"<layer path>.kernel"``, ``"<layer path>.bias"``, other state by its path).

    Attributes:
      tensors: ``{name: DenseTensor | SparseTensor}``.
    """

    tensors: dict[str, DenseTensor | SparseTensor]


def compress(model: nnx.Module, *, bias_dtype: str = "float32", sparse: bool = True) -> CompressedModel:
    """The compressed form of a model: shared kernels as codebooks, kernels with zeros as sparse tensors.

    A layer wrapped with :class:`SharedWeights` gives a codebook tensor (of the centroids its weights use); a plain
    kernel with zeros (with ``sparse=True``) a sparse tensor of raw values; every other array — dense kernels, biases
    (in ``bias_dtype``), any state outside the layers — a dense tensor. :func:`decompress` returns exactly the
    kernels the model computes with (and the biases rounded to ``bias_dtype``).

    Args:
      model: an NNX model of conv and dense layers, plain or wrapped by :func:`share_weights` (no other
        quantizers).
      bias_dtype: ``"float32"`` or ``"float16"``.
      sparse: store kernels with zeros sparsely (only the non-zeros and their relative positions).

    Returns:
      The :class:`CompressedModel`.

    Raises:
      ValueError: for an unknown ``bias_dtype``, or a layer wrapped with anything but shared weights.
    """
    check_choice(bias_dtype, "bias_dtype", ("float32", "float16"))
    sparse = check_bool(sparse, "sparse")
    tensors: dict[str, DenseTensor | SparseTensor] = {}
    layers = nn.find_layers(model)
    for path, layer in layers.items():
        inner = layer.layer if isinstance(layer, nn.QuantLayer) else layer
        if isinstance(layer, nn.QuantLayer) and (
            layer.mask is not None
            or layer.input_quantizer is not None
            or layer.output_quantizer is not None
            or layer.bias_quantizer is not None
            or not isinstance(layer.weight_quantizer, SharedWeights)
        ):
            raise ValueError(f"layer {path!r} is wrapped with more than shared weights; compress a plain model")
        if isinstance(layer, nn.QuantLayer):
            shared = layer.weight_quantizer
            indices = np.asarray(shared.indices[...]).ravel()
            positions = np.flatnonzero(indices >= 0)
            # A centroid no weight uses (linear initialisation can leave some in the gap pruning cut around zero)
            # is not stored: the codebook keeps the used ones, in order, and the indices are renumbered.
            used, renumbered = np.unique(indices[positions], return_inverse=True)
            centroids = np.asarray(shared.centroids[...])[used]
            tensors[f"{path}.kernel"] = SparseTensor(
                tuple(inner.kernel.shape), positions, None, centroids, renumbered.ravel()
            )
        else:
            kernel = np.asarray(inner.kernel[...], np.float32)
            positions = np.flatnonzero(kernel.ravel())
            tensors[f"{path}.kernel"] = (
                SparseTensor(kernel.shape, positions, kernel.ravel()[positions])
                if sparse and len(positions) < kernel.size
                else DenseTensor(kernel)
            )
        if inner.bias is not None:
            tensors[f"{path}.bias"] = DenseTensor(np.asarray(inner.bias[...]).astype(bias_dtype))
    for name, value in _other_state(model, layers).items():
        tensors[name] = DenseTensor(np.asarray(value, np.float32))
    return CompressedModel(tensors)


def decompress(compressed: CompressedModel) -> dict[str, np.ndarray]:
    """Every tensor as a float32 array.

    Args:
      compressed: the model.

    Returns:
      ``{name: array}``: a sparse tensor with ``+0.0`` where nothing is stored, a codebook tensor as
      ``centroids[indices]``, a float16 tensor widened exactly.
    """
    return {
        name: tensor.dense() if isinstance(tensor, SparseTensor) else tensor.values.astype(np.float32)
        for name, tensor in compressed.tensors.items()
    }


def load_compressed(compressed: CompressedModel, model: nnx.Module) -> nnx.Module:
    """A copy of a model holding the decompressed tensors (:func:`decompress`).

    Args:
      compressed: the model read from a file (:func:`read_compressed`) or made by :func:`compress`.
      model: a plain model of the same architecture, e.g. the folded float model; its arrays are replaced.

    Returns:
      The copy, which computes exactly with the stored values.

    Raises:
      ValueError: if a tensor names nothing in the model or has another shape.
    """
    clone = nnx.clone(model)
    for name, array in decompress(compressed).items():
        module_path, _, attribute = name.rpartition(".")
        variable = getattr(nn.get_module(clone, module_path), attribute, None)
        if not isinstance(variable, nnx.Variable) or variable.shape != array.shape:
            raise ValueError(f"tensor {name!r} {array.shape} does not match the model")
        variable[...] = jnp.asarray(array, variable[...].dtype)
    return clone


def _other_state(model: nnx.Module, layers: Mapping[str, nnx.Module]) -> dict[str, np.ndarray]:
    """State arrays outside the layers, by dotted path (e.g. the statistics of an unfolded BatchNorm)."""
    arrays = {key.replace("/", "."): value for key, value in train.model_to_arrays(model).items()}
    return {name: value for name, value in arrays.items() if not any(name.startswith(f"{p}.") for p in layers)}


# --- the file format: encode and decode --------------------------------------------------------------------------

# A dense tensor's dtype: (kind, bits per value, the unsigned dtype of its bits).
_DENSE = {np.dtype(np.float32): (0, 32, np.uint32), np.dtype(np.float16): (1, 16, np.uint16)}
_DENSE_BY_KIND = {kind: (dtype, width, bits) for dtype, (kind, width, bits) in _DENSE.items()}
_SPARSE_KIND = 2
_MAX_ELEMENTS = 1 << 40


def encode(compressed: CompressedModel, *, huffman: bool = True) -> bytes:
    """The file's bytes (format version 1; see the module docstring).

    Args:
      compressed: the model.
      huffman: Huffman-code every symbol stream (cluster and gap symbols); otherwise fixed-width fields.

    Returns:
      The bytes of the file.
    """
    if not isinstance(compressed, CompressedModel):
        raise TypeError(f"compressed must be a CompressedModel (from compress), got {type(compressed).__name__}")
    huffman = check_bool(huffman, "huffman")
    writer = coding.BitWriter()
    writer.write_varint(len(compressed.tensors))
    for name, tensor in compressed.tensors.items():
        encoded_name = name.encode("utf-8")
        writer.write_varint(len(encoded_name))
        writer.write_array(np.frombuffer(encoded_name, np.uint8), 8)
        shape = tensor.shape if isinstance(tensor, SparseTensor) else tensor.values.shape
        writer.write_varint(len(shape))
        for size in shape:
            writer.write_varint(int(size))
        if isinstance(tensor, SparseTensor):
            writer.write(_SPARSE_KIND, 2)
            _write_sparse(writer, tensor, huffman)
        else:
            kind, width, bits = _DENSE[tensor.values.dtype]
            writer.write(kind, 2)
            writer.write_array(np.ascontiguousarray(tensor.values).view(bits).ravel(), width)
    payload = writer.getvalue()
    head = MAGIC + bytes([VERSION]) + len(payload).to_bytes(4, "little") + payload
    return head + zlib.crc32(head).to_bytes(4, "little")


def decode(blob: bytes, what: str = "compressed model") -> CompressedModel:
    """Reads what :func:`encode` wrote, checking the header, the checksum and every field.

    Args:
      blob: the file's bytes.
      what: how error messages name the file.

    Returns:
      The :class:`CompressedModel`, equal array for array (bit for bit) to the one encoded.

    Raises:
      ValueError: naming what is wrong — not this format, another version, truncated, corrupted (checksum), or a
        field that does not fit.
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"blob must be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < 4 or blob[:4] != MAGIC:
        raise ValueError(f"{what} is not a quantref compressed model (no {MAGIC!r} magic)")
    if len(blob) < 13:
        raise ValueError(f"{what} is truncated: {len(blob)} bytes, fewer than the 13 of an empty file")
    if blob[4] != VERSION:
        raise ValueError(f"{what} has format version {blob[4]}; this quantref reads version {VERSION}")
    length = int.from_bytes(blob[5:9], "little")
    if len(blob) != 9 + length + 4:
        state = "truncated" if len(blob) < 9 + length + 4 else "longer than its header says"
        raise ValueError(f"{what} is {state}: {len(blob)} bytes, the header says {9 + length + 4}")
    if zlib.crc32(blob[:-4]) != int.from_bytes(blob[-4:], "little"):
        raise ValueError(f"{what} is corrupted: its CRC-32 checksum does not match its contents")
    reader = coding.BitReader(blob[9:-4], what)
    tensors: dict[str, DenseTensor | SparseTensor] = {}
    for _ in range(reader.read_varint(limit=1 << 20)):
        name_length = reader.read_varint(limit=1 << 16)
        try:
            name = reader.read_array(name_length, 8).astype(np.uint8).tobytes().decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{what} is corrupt: a tensor name is not UTF-8") from None
        if name in tensors:
            raise ValueError(f"{what} is corrupt: tensor {name!r} appears twice")
        shape = tuple(reader.read_varint(limit=_MAX_ELEMENTS) for _ in range(reader.read_varint(limit=32)))
        size = int(np.prod(shape, dtype=object))
        if size > _MAX_ELEMENTS:
            raise ValueError(f"{what} is corrupt: tensor {name!r} has an impossible shape {shape}")
        kind = reader.read(2)
        if kind == _SPARSE_KIND:
            tensors[name] = _read_sparse(reader, shape, size, what, name)
        elif kind in _DENSE_BY_KIND:
            dtype, width, bits = _DENSE_BY_KIND[kind]
            if size * width > reader.remaining:
                raise ValueError(f"{what} is truncated inside tensor {name!r}")
            tensors[name] = DenseTensor(reader.read_array(size, width).astype(bits).view(dtype).reshape(shape))
        else:
            raise ValueError(f"{what} is corrupt: tensor {name!r} has unknown kind {kind}")
    if reader.remaining >= 8 or reader.read(reader.remaining) != 0:
        raise ValueError(f"{what} is corrupt: data after the last tensor")
    return CompressedModel(tensors)


def write_compressed(
    compressed: CompressedModel, out_dir: str | Path, *, huffman: bool = True, force: bool = False
) -> dict[str, Path]:
    """Writes ``out_dir/model.qrc`` atomically (an interrupted write leaves the old file or the new one).

    Args:
      compressed: from :func:`compress` (e.g. :attr:`DeepCompression.compressed`).
      out_dir: the directory; created if missing.
      huffman: Huffman-code the symbol streams (see :func:`encode`).
      force: replace quantref's files in a non-empty ``out_dir`` (other files there are kept).

    Returns:
      ``{"model": path}``.

    Raises:
      ValueError: if ``out_dir`` is a file, is not empty and ``force`` is False, or cannot be written.
    """
    target = _files.check_output_dir(out_dir, force=force)
    blob = encode(compressed, huffman=huffman)
    written = _files.write_files(target, {FILE_NAME: lambda path: path.write_bytes(blob)})
    return {"model": written[FILE_NAME]}


def read_compressed(path: str | Path) -> CompressedModel:
    """Reads a file written by :func:`write_compressed`.

    Args:
      path: the file, or the directory holding ``model.qrc``.

    Returns:
      The :class:`CompressedModel`.

    Raises:
      ValueError: for a file that is not exactly a valid compressed model (see :func:`decode`).
    """
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    return decode(path.read_bytes(), what=str(path))


def _write_sparse(writer: coding.BitWriter, tensor: SparseTensor, huffman: bool) -> None:
    gaps = np.diff(np.asarray(tensor.positions, np.int64), prepend=-1)
    span = min(range(1, 16), key=lambda bits: _stream_bits(_gap_symbols(gaps, bits), 1 << bits, huffman))
    symbols = _gap_symbols(gaps, span)
    writer.write(span, 4)
    writer.write_varint(len(symbols))
    _write_stream(writer, symbols, 1 << span, huffman)
    if tensor.values is not None:
        writer.write(0, 1)
        writer.write_array(np.asarray(tensor.values, np.float32).view(np.uint32), 32)
    else:
        writer.write(1, 1)
        writer.write_varint(len(tensor.centroids))
        writer.write_array(np.asarray(tensor.centroids, np.float32).view(np.uint32), 32)
        _write_stream(writer, np.asarray(tensor.indices), len(tensor.centroids), huffman)


def _read_sparse(reader: coding.BitReader, shape: tuple, size: int, what: str, name: str) -> SparseTensor:
    span = reader.read(4)
    if span == 0:
        raise ValueError(f"{what} is corrupt: tensor {name!r} has a gap width of 0 bits")
    symbols = _read_stream(reader, reader.read_varint(limit=size + 1), 1 << span)
    escape = (1 << span) - 1
    steps = np.where(symbols == escape, escape, symbols + 1)
    positions = (np.cumsum(steps) - 1)[symbols != escape]
    if len(positions) and positions[-1] >= size:
        raise ValueError(f"{what} is corrupt: tensor {name!r} stores a value beyond its {size} elements")
    if reader.read(1) == 0:
        if len(positions) * 32 > reader.remaining:
            raise ValueError(f"{what} is truncated inside tensor {name!r}")
        values = reader.read_array(len(positions), 32).astype(np.uint32).view(np.float32)
        return SparseTensor(shape, positions, values)
    clusters = reader.read_varint(limit=1 << 16)
    if clusters == 0:
        raise ValueError(f"{what} is corrupt: tensor {name!r} has an empty codebook")
    centroids = reader.read_array(clusters, 32).astype(np.uint32).view(np.float32)
    indices = _read_stream(reader, len(positions), clusters)
    return SparseTensor(shape, positions, None, centroids, indices)


def _gap_symbols(gaps: np.ndarray, span: int) -> np.ndarray:
    """Gap symbols for gaps ≥ 1: each gap $d$ becomes $\\lfloor (d-1)/E \\rfloor$ escapes $E = 2^b - 1$, then
    $d - 1 - E \\lfloor (d-1)/E \\rfloor$."""
    escape = (1 << span) - 1
    escapes = (gaps - 1) // escape
    last = gaps - 1 - escapes * escape
    symbols = np.full(int(escapes.sum() + len(gaps)), escape, np.int64)
    symbols[np.cumsum(escapes + 1) - 1] = last
    return symbols


def _fixed_width(alphabet: int) -> int:
    return max(alphabet - 1, 0).bit_length()


def _huffman_table(symbols: np.ndarray, alphabet: int) -> tuple[np.ndarray, int]:
    lengths = coding.huffman_code_lengths(np.bincount(symbols, minlength=alphabet))
    return lengths, max(int(lengths.max()), 1).bit_length()


def _stream_bits(symbols: np.ndarray, alphabet: int, huffman: bool) -> int:
    if not huffman or not len(symbols):
        return 1 + len(symbols) * _fixed_width(alphabet)
    lengths, width = _huffman_table(symbols, alphabet)
    return 1 + 3 + alphabet * width + coding.coded_bits(np.bincount(symbols, minlength=alphabet), lengths)


def _write_stream(writer: coding.BitWriter, symbols: np.ndarray, alphabet: int, huffman: bool) -> None:
    if not huffman or not len(symbols):
        writer.write(0, 1)
        writer.write_array(symbols, _fixed_width(alphabet))
        return
    lengths, width = _huffman_table(symbols, alphabet)
    writer.write(1, 1)
    writer.write(width, 3)
    writer.write_array(lengths, width)
    writer.write_symbols(symbols, lengths)


def _read_stream(reader: coding.BitReader, count: int, alphabet: int) -> np.ndarray:
    if reader.read(1) == 0:
        width = _fixed_width(alphabet)
        if count * width > reader.remaining:
            raise ValueError("stream is truncated")
        symbols = reader.read_array(count, width).astype(np.int64)
        if len(symbols) and symbols.max() >= alphabet:
            raise ValueError(f"stream is corrupt: symbol {symbols.max()} outside an alphabet of {alphabet}")
        return symbols
    width = reader.read(3)
    if alphabet * width > reader.remaining:
        raise ValueError("stream is truncated in its Huffman table")
    lengths = reader.read_array(alphabet, width).astype(np.int64)
    try:
        return reader.read_symbols(count, lengths)
    except ValueError as error:
        raise ValueError(f"stream is corrupt: {error}") from None


# --- the whole pipeline, for the walkthrough model ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DeepCompressionConfig:
    """The three stages' settings for :func:`deep_compression`.

    Attributes:
      sparsity: ``((path, final sparsity), ...)`` for gradual magnitude pruning.
      prune: fine-tuning during pruning (the schedule ends at ``schedule_end`` of its steps).
      schedule_end: the fraction of ``prune.steps`` after which the sparsity stays final.
      frequency: steps between mask updates.
      bits: ``((path, b), ...)``: $2^b$ shared values per layer.
      centroids: centroid fine-tuning.
      bias_dtype: how biases are stored.
    """

    sparsity: tuple[tuple[str, float], ...] = (("conv1", 0.6), ("conv2", 0.95), ("dense", 0.97))
    prune: pruning.FineTuneConfig = pruning.FineTuneConfig(steps=1000, learning_rate=3e-3)
    schedule_end: float = 0.6
    frequency: int = 25
    bits: tuple[tuple[str, int], ...] = (("conv1", 4), ("conv2", 4), ("dense", 4))
    centroids: pruning.FineTuneConfig = pruning.FineTuneConfig(steps=300, learning_rate=1e-3)
    bias_dtype: str = "float16"


@dataclasses.dataclass(frozen=True)
class DeepCompression:
    """Every stage's model, for reporting accuracy and size at each step.

    Attributes:
      pruned: the pruned, fine-tuned model (BatchNorm folded, plain layers).
      shared: ``pruned`` with k-means shared weights, before centroid fine-tuning.
      tuned: ``shared`` after centroid fine-tuning.
      compressed: ``tuned`` in compressed form.
    """

    pruned: nnx.Module
    shared: nnx.Module
    tuned: nnx.Module
    compressed: CompressedModel


def deep_compression(
    model: nnx.Module,
    x: np.ndarray,
    y: np.ndarray,
    config: DeepCompressionConfig = DeepCompressionConfig(),
    *,
    forward: Callable[[nnx.Module, jax.Array], jax.Array] | None = None,
    progress: bool = True,
) -> DeepCompression:
    """Prunes gradually (with BatchNorm in training mode), folds BatchNorm, shares weights, fine-tunes the
    centroids, and compresses — the fine-tuned models cached on disk (:func:`quantref.pruning.load_or_fine_tune`).

    Args:
      model: the trained float model (e.g. ``train.load_or_train()``).
      x: training inputs.
      y: training labels.
      config: the settings.
      forward: the training-mode call, as in :func:`quantref.pruning.fine_tune`.
      progress: show tqdm bars.

    Returns:
      The :class:`DeepCompression` stages.
    """
    kwargs: dict[str, Any] = {"progress": progress} | ({"forward": forward} if forward is not None else {})
    schedule = pruning.Schedule(
        final_sparsity=config.sparsity,
        end_step=max(1, round(config.schedule_end * config.prune.steps)),
        frequency=config.frequency,
    )
    pruned = pruning.load_or_fine_tune(model, x, y, config.prune, schedule=schedule, **kwargs)
    folded = nn.fold_batch_norm(pruned, x[:1])
    shared = share_weights(folded, dict(config.bits))
    tuned = pruning.load_or_fine_tune(shared, x, y, config.centroids, wrt=Centroids, **kwargs)
    return DeepCompression(folded, shared, tuned, compress(tuned, bias_dtype=config.bias_dtype))
