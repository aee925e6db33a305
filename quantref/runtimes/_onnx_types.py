"""The ONNX tensor types the quantization operators take and give, and the two flavors of their semantics. Private.

Shared by :mod:`quantref.runtimes.onnx` (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear) and
:mod:`quantref.runtimes.onnx_integer` (MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv): a quantized
tensor's numpy / ml_dtypes dtype *is* its ONNX type.
"""

from __future__ import annotations

from typing import Literal

import ml_dtypes
import numpy as np

from quantref import formats

Flavor = Literal["onnxruntime", "reference"]
FLAVORS = ("onnxruntime", "reference")

# The integer output types of QuantizeLinear and their grids. int4/uint4 need opset 21, int2/uint2 opset 25.
INT_FORMATS: dict[np.dtype, formats.IntFormat] = {
    np.dtype(np.int8): formats.INT8,
    np.dtype(np.uint8): formats.UINT8,
    np.dtype(np.int16): formats.INT16,
    np.dtype(np.uint16): formats.int_format(16, signed=False),
    np.dtype(ml_dtypes.int4): formats.INT4,
    np.dtype(ml_dtypes.uint4): formats.UINT4,
    np.dtype(ml_dtypes.int2): formats.int_format(2, signed=True),
    np.dtype(ml_dtypes.uint2): formats.int_format(2, signed=False),
}
FLOAT8_NAMES: dict[np.dtype, str] = {dtype: name for name, dtype in formats.FLOAT8_DTYPES.items()}
#: FLOAT4E2M1 (opset 23): e2m1 with no infinity and no NaN, largest value 6.
FLOAT4 = np.dtype(ml_dtypes.float4_e2m1fn)

#: Every output type of QuantizeLinear, by name.
QUANTIZED_DTYPES: dict[str, np.dtype] = {
    **{dtype.name: dtype for dtype in INT_FORMATS},
    **formats.FLOAT8_DTYPES,
    FLOAT4.name: FLOAT4,
}
EIGHT_BIT = (np.dtype(np.int8), np.dtype(np.uint8))
#: Scale types besides float32: onnxruntime takes float16 scales (opset 19+); bfloat16 is the spec's too.
HALF_DTYPES = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
