"""A minimal writer of TFLite flatbuffers: the few tables of ``schema.fbs`` that an int8 CNN needs.

A ``.tflite`` file is one FlatBuffer whose root is a ``Model`` (file identifier ``"TFL3"``): a list of operator
codes, one ``SubGraph`` (tensors, operators, input and output tensor indices) and a list of ``Buffer`` s holding the
constant tensors' bytes (buffer 0 is the empty buffer of every non-constant tensor). A FlatBuffer table is written
as a vtable of field *slots*; the slot numbers and enum values below are those of TFLite's ``schema.fbs``
(``tensorflow/compiler/mlir/lite/schema/schema.fbs``), and the tests read every file back with the generated
reader that ships with LiteRT, so a wrong slot does not go unnoticed.

Only what :mod:`quantref.export.tflite` writes is here: no sparsity, no custom options, no signature runners.

References:
  TFLite schema ``schema.fbs``; FlatBuffers binary format, https://flatbuffers.dev/internals/
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flatbuffers
import numpy as np

__all__ = ["OPERATORS", "TENSOR_TYPES", "ACTIVATIONS", "PADDINGS", "Tensor", "Operator", "model_bytes"]

# BuiltinOperator code and the operator version a converter writes for int8 tensors (op_version.cc); float32
# operators are version 1.
OPERATORS: dict[str, tuple[int, int]] = {
    "CONV_2D": (3, 3),
    "DEQUANTIZE": (6, 2),
    "FULLY_CONNECTED": (9, 4),
    "MAX_POOL_2D": (17, 2),
    "RESHAPE": (22, 1),
    "QUANTIZE": (114, 1),
}
TENSOR_TYPES: dict[str, int] = {"float32": 0, "int32": 2, "int8": 9}
ACTIVATIONS: dict[str, int] = {"NONE": 0, "RELU": 1}
PADDINGS: dict[str, int] = {"SAME": 0, "VALID": 1}
_SCHEMA_VERSION = 3
_FILE_IDENTIFIER = b"TFL3"
_BUFFER_ALIGNMENT = 16  # constant data aligned for any element type, as the converter does

# BuiltinOptions union members: (union type, {option name: (slot, kind, default)}).
_OPTIONS: dict[str, tuple[int, dict[str, tuple[int, str, int]]]] = {
    "Conv2DOptions": (
        1,
        {
            "padding": (0, "int8", 0),
            "stride_w": (1, "int32", 0),
            "stride_h": (2, "int32", 0),
            "fused_activation_function": (3, "int8", 0),
            "dilation_w_factor": (4, "int32", 1),
            "dilation_h_factor": (5, "int32", 1),
        },
    ),
    "Pool2DOptions": (
        5,
        {
            "padding": (0, "int8", 0),
            "stride_w": (1, "int32", 0),
            "stride_h": (2, "int32", 0),
            "filter_width": (3, "int32", 0),
            "filter_height": (4, "int32", 0),
            "fused_activation_function": (5, "int8", 0),
        },
    ),
    "FullyConnectedOptions": (8, {"fused_activation_function": (0, "int8", 0), "keep_num_dims": (2, "bool", 0)}),
    "ReshapeOptions": (17, {}),
    "DequantizeOptions": (38, {}),
    "QuantizeOptions": (89, {}),
}
_PREPEND_SLOT = {
    "int8": "PrependInt8Slot",
    "uint8": "PrependUint8Slot",
    "bool": "PrependBoolSlot",
    "int32": "PrependInt32Slot",
    "uint32": "PrependUint32Slot",
    "offset": "PrependUOffsetTRelativeSlot",
}


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One tensor of the subgraph.

    Attributes:
      name: the tensor's name.
      shape: its shape (batch 1 for activations; see ``shape_signature``).
      dtype: a key of :data:`TENSOR_TYPES`.
      data: the constant's values (any array of ``dtype``), or None for an activation.
      scale: float32 quantization scales, one (per tensor) or one per slice along ``quantized_dimension``.
      zero_point: the matching int64 zero points.
      quantized_dimension: the axis the scales run along.
      shape_signature: the shape with -1 for a dynamic (batch) dimension, or None if static.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    data: np.ndarray | None = None
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    quantized_dimension: int = 0
    shape_signature: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Operator:
    """One operator: a key of :data:`OPERATORS`, tensor indices in and out, its builtin options by name, and its
    version (``None``: the int8 version of :data:`OPERATORS`)."""

    opcode: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options_type: str | None = None
    options: dict[str, int] = dataclasses.field(default_factory=dict)
    version: int | None = None

    @property
    def code(self) -> tuple[str, int]:
        """The (operator, version) pair that names its entry in the model's operator codes."""
        if self.opcode not in OPERATORS:
            raise ValueError(f"unknown operator {self.opcode!r}; known: {sorted(OPERATORS)}")
        return self.opcode, OPERATORS[self.opcode][1] if self.version is None else self.version


def model_bytes(
    tensors: Sequence[Tensor],
    operators: Sequence[Operator],
    inputs: Sequence[int],
    outputs: Sequence[int],
    *,
    description: str = "quantref",
) -> bytes:
    """Serializes one subgraph as a ``.tflite`` flatbuffer.

    Args:
      tensors: every tensor; constants carry ``data``.
      operators: the operators in execution order.
      inputs: indices of the subgraph's input tensors.
      outputs: indices of its output tensors.
      description: the model's description string.

    Returns:
      The file's bytes.

    Raises:
      ValueError: for an unknown operator, tensor type or option, or a constant whose data does not match its
        shape and type.
    """
    builder = flatbuffers.Builder(1024)
    opcodes = sorted({op.code for op in operators}, key=lambda code: (OPERATORS[code[0]][0], code[1]))
    # Buffer 0 is the empty sentinel; each constant gets a buffer of its own.
    buffer_data: list[bytes | None] = [None]
    tensor_offsets = []
    for tensor in tensors:
        buffer_index = 0
        if tensor.data is not None:
            buffer_index = len(buffer_data)
            buffer_data.append(_constant_bytes(tensor))
        tensor_offsets.append(_tensor(builder, tensor, buffer_index))
    operator_offsets = [_operator(builder, op, opcodes.index(op.code)) for op in operators]
    subgraph = _table(
        builder,
        [
            (0, "offset", _offset_vector(builder, tensor_offsets)),
            (1, "offset", builder.CreateNumpyVector(np.asarray(inputs, np.int32))),
            (2, "offset", builder.CreateNumpyVector(np.asarray(outputs, np.int32))),
            (3, "offset", _offset_vector(builder, operator_offsets)),
            (4, "offset", builder.CreateString("main")),
        ],
    )
    codes = []
    for name, version in opcodes:
        code = OPERATORS[name][0]
        # deprecated_builtin_code (int8) holds codes below 127; builtin_code (int32) holds every code.
        codes.append(_table(builder, [(0, "int8", min(code, 127)), (2, "int32", version), (3, "int32", code)]))
    buffers = []
    for data in buffer_data:
        fields = [] if data is None else [(0, "offset", _aligned_bytes(builder, data))]
        buffers.append(_table(builder, fields))
    model = _table(
        builder,
        [
            (0, "uint32", _SCHEMA_VERSION),
            (1, "offset", _offset_vector(builder, codes)),
            (2, "offset", _offset_vector(builder, [subgraph])),
            (3, "offset", builder.CreateString(description)),
            (4, "offset", _offset_vector(builder, buffers)),
        ],
    )
    builder.Finish(model, file_identifier=_FILE_IDENTIFIER)
    return bytes(builder.Output())


def _constant_bytes(tensor: Tensor) -> bytes:
    if tensor.dtype not in TENSOR_TYPES:
        raise ValueError(f"tensor {tensor.name!r} has unknown dtype {tensor.dtype!r}")
    data = np.asarray(tensor.data)
    if data.dtype != np.dtype(tensor.dtype) or data.shape != tuple(tensor.shape):
        raise ValueError(
            f"tensor {tensor.name!r} is declared {tensor.dtype}{tuple(tensor.shape)}, "
            f"its data is {data.dtype}{data.shape}"
        )
    return np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes()


def _tensor(builder: flatbuffers.Builder, tensor: Tensor, buffer_index: int) -> int:
    if tensor.dtype not in TENSOR_TYPES:
        raise ValueError(f"tensor {tensor.name!r} has unknown dtype {tensor.dtype!r}")
    fields = [
        (0, "offset", builder.CreateNumpyVector(np.asarray(tensor.shape, np.int32))),
        (1, "int8", TENSOR_TYPES[tensor.dtype]),
        (2, "uint32", buffer_index),
        (3, "offset", builder.CreateString(tensor.name)),
    ]
    if tensor.scale is not None:
        scale = np.asarray(tensor.scale, np.float32).reshape(-1)
        zero_point = np.asarray(tensor.zero_point, np.int64).reshape(-1)
        quantization = _table(
            builder,
            [
                (2, "offset", builder.CreateNumpyVector(scale)),
                (3, "offset", builder.CreateNumpyVector(zero_point)),
                (6, "int32", tensor.quantized_dimension),
            ],
        )
        fields.append((4, "offset", quantization))
    if tensor.shape_signature is not None:
        fields.append((7, "offset", builder.CreateNumpyVector(np.asarray(tensor.shape_signature, np.int32))))
    return _table(builder, fields)


def _operator(builder: flatbuffers.Builder, op: Operator, opcode_index: int) -> int:
    fields = [
        (0, "uint32", opcode_index),
        (1, "offset", builder.CreateNumpyVector(np.asarray(op.inputs, np.int32))),
        (2, "offset", builder.CreateNumpyVector(np.asarray(op.outputs, np.int32))),
    ]
    if op.options_type is not None:
        if op.options_type not in _OPTIONS:
            raise ValueError(f"unknown builtin options {op.options_type!r}; known: {sorted(_OPTIONS)}")
        union_type, slots = _OPTIONS[op.options_type]
        unknown = set(op.options) - set(slots)
        if unknown:
            raise ValueError(f"{op.options_type} has no field(s) {sorted(unknown)}")
        options = _table(builder, [(slots[name][0], slots[name][1], value) for name, value in op.options.items()])
        fields += [(3, "uint8", union_type), (4, "offset", options)]
    return _table(builder, fields)


def _table(builder: flatbuffers.Builder, fields: Sequence[tuple[int, str, int]]) -> int:
    """One table from ``(slot, kind, value)``; its children (strings, vectors, tables) must already be written.

    Every scalar is written, defaults included (default ``None``), so no reader relies on the schema's default."""
    builder.StartObject(1 + max((slot for slot, _, _ in fields), default=-1))
    for slot, kind, value in fields:
        getattr(builder, _PREPEND_SLOT[kind])(slot, value, 0 if kind == "offset" else None)
    return builder.EndObject()


def _offset_vector(builder: flatbuffers.Builder, offsets: Sequence[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _aligned_bytes(builder: flatbuffers.Builder, data: bytes) -> int:
    # Pad so that the payload (written next, just below the vector's length prefix) starts on the alignment.
    builder.Prep(_BUFFER_ALIGNMENT, len(data))
    return builder.CreateNumpyVector(np.frombuffer(data, np.uint8))
