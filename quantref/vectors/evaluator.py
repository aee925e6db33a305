"""Computing a case's expected outputs with :mod:`quantref.runtimes`: one rule per operator, in a registry.

``_RULES[operator](inputs, attributes, runtime)`` returns the operator's outputs by name; the runtime (a key of
:data:`~quantref.vectors.encoding.RUNTIMES`) selects the ONNX flavor or TFLite's rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from quantref import microscaling
from quantref.runtimes import onnx as qonnx
from quantref.runtimes import tflite as qtflite
from quantref.runtimes import torch as qtorch
from quantref.vectors.encoding import RUNTIMES

__all__ = ["OPERATORS", "evaluate"]

Inputs = dict[str, np.ndarray]
Outputs = dict[str, Any]


def evaluate(
    operator: str, runtime: str, inputs: dict[str, np.ndarray], attributes: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Compute a case's outputs with :mod:`quantref.runtimes` — the expectation the vectors record.

    Args:
      operator: the case's ``operator``, one of :data:`OPERATORS`.
      runtime: the case's ``runtime`` (a key of :data:`~quantref.vectors.encoding.RUNTIMES`); selects the ONNX
        flavor or TFLite's rounding.
      inputs: input name → array in its true dtype (as :func:`~quantref.vectors.load_case` returns them).
      attributes: the case's attributes, as in the manifest.

    Returns:
      Output name → numpy array in its true dtype.

    Raises:
      ValueError: for an operator or runtime this format does not define, a missing input or attribute, or
        invalid operator arguments (naming the operator).
      TypeError: for inputs of the wrong type (naming the operator).
    """
    if not isinstance(runtime, str) or runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; known: {sorted(RUNTIMES)}")
    if not isinstance(operator, str) or operator not in _RULES:
        raise ValueError(f"unknown operator {operator!r}; known: {', '.join(OPERATORS)}")
    if not isinstance(inputs, dict) or not isinstance(attributes, dict):
        raise TypeError(
            f"{operator}: inputs and attributes must be dicts, got {type(inputs).__name__} and "
            f"{type(attributes).__name__}"
        )
    try:
        outputs = _RULES[operator](inputs, attributes, runtime)
    except KeyError as error:
        raise ValueError(f"{operator}: missing input or attribute {error}") from None
    except (TypeError, ValueError) as error:
        raise type(error)(f"{operator}: {error}") from error
    return {name: np.asarray(value) for name, value in outputs.items()}


# ----------------------------------------------------------------------------------------------------------------
# The rules


def _flavor(runtime: str) -> str:
    return "reference" if runtime == "onnx-reference" else "onnxruntime"


def _conv_attributes(a: dict[str, Any]) -> dict[str, Any]:
    return {
        key: (tuple(a[key]) if key in ("strides", "pads", "dilations") else a[key])
        for key in ("strides", "pads", "dilations", "group")
        if key in a
    }


def _quantize_linear(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    y = qonnx.quantize_linear(
        i["x"],
        i["y_scale"],
        i.get("y_zero_point"),
        axis=a.get("axis", 1),
        block_size=a.get("block_size", 0),
        saturate=bool(a.get("saturate", 1)),
        output_dtype=a.get("output_dtype"),
        flavor=_flavor(runtime),
    )
    return {"y": y}


def _dequantize_linear(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    axis, block_size = a.get("axis", 1), a.get("block_size", 0)
    return {"y": qonnx.dequantize_linear(i["x"], i["x_scale"], i.get("x_zero_point"), axis=axis, block_size=block_size)}


def _dynamic_quantize_linear(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    return dict(zip(("y", "y_scale", "y_zero_point"), qonnx.dynamic_quantize_linear(i["x"], flavor=_flavor(runtime))))


def _matmul_integer(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    return {"y": qonnx.matmul_integer(i["a"], i["b"], i.get("a_zero_point"), i.get("b_zero_point"))}


def _conv_integer(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    zero_points = (i.get("x_zero_point"), i.get("w_zero_point"))
    return {"y": qonnx.conv_integer(i["x"], i["w"], *zero_points, **_conv_attributes(a))}


def _qlinear_matmul(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    names = ("a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale", "y_zero_point")
    return {"y": qonnx.qlinear_matmul(*(i[n] for n in names), flavor=_flavor(runtime))}


def _qlinear_conv(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    names = ("x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale", "y_zero_point")
    inputs = (i[n] for n in names)
    return {"y": qonnx.qlinear_conv(*inputs, i.get("B"), **_conv_attributes(a), flavor=_flavor(runtime))}


def _scalar(value: np.ndarray, kind: type) -> Any:
    """A stored 0-d array as the Python scalar the torch/TFLite functions take."""
    return kind(np.asarray(value).item())


def _quantize_per_tensor(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    scale, zero_point = _scalar(i["scale"], float), _scalar(i["zero_point"], int)
    return {"y": qtorch.quantize_per_tensor(i["x"], scale, zero_point, a["dtype"])}


def _quantize_per_channel(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    return {"y": qtorch.quantize_per_channel(i["x"], i["scales"], i["zero_points"], a["axis"], a["dtype"])}


def _fake_quantize_per_tensor(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    scale, zero_point = _scalar(i["scale"], float), _scalar(i["zero_point"], int)
    return {"y": qtorch.fake_quantize_per_tensor_affine(i["x"], scale, zero_point, a["quant_min"], a["quant_max"])}


def _fake_quantize_per_channel(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    y = qtorch.fake_quantize_per_channel_affine(
        i["x"], i["scale"], i["zero_point"], a["axis"], a["quant_min"], a["quant_max"]
    )
    return {"y": y}


def _min_max_observer(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    scale, zero_point = qtorch.min_max_observer(i["x"], a["dtype"], a["qscheme"], a["reduce_range"])
    return {"scale": scale, "zero_point": zero_point}


def _quantize_multiplier(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    single_rounding = runtime == "tflite-single-rounding"
    multiplier, shift = qtflite.quantize_multiplier_array(i["real_multiplier"], single_rounding=single_rounding)
    return {"quantized_multiplier": multiplier, "shift": shift}


def _multiply_by_quantized_multiplier(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    single_rounding = runtime == "tflite-single-rounding"
    y = qtflite.multiply_by_quantized_multiplier(
        i["x"], i["quantized_multiplier"], i["shift"], single_rounding=single_rounding
    )
    return {"y": y}


def _tflite_quantize(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    return {"y": qtflite.quantize(i["x"], _scalar(i["scale"], float), _scalar(i["zero_point"], int), a["dtype"])}


def _kernel_options(a: dict[str, Any], runtime: str) -> dict[str, Any]:
    options = {key: value for key, value in a.items() if key not in ("strides", "dilations", "padding")}
    return {**options, "single_rounding": runtime == "tflite-single-rounding"}


def _fully_connected(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    operands = (i["x"], i["filters"], i.get("bias"), i["output_multiplier"], i["output_shift"])
    return {"y": qtflite.fully_connected(*operands, **_kernel_options(a, runtime))}


def _conv2d(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    operands = (i["x"], i["filters"], i.get("bias"), i["output_multiplier"], i["output_shift"])
    padding = a["padding"] if isinstance(a["padding"], str) else tuple(tuple(p) for p in a["padding"])
    geometry = {"strides": tuple(a["strides"]), "dilations": tuple(a["dilations"]), "padding": padding}
    return {"y": qtflite.conv2d(*operands, **geometry, **_kernel_options(a, runtime))}


def _codes(values) -> np.ndarray:
    """MX/NVFP4 elements and scales as their codes: uint8 bit patterns (int8 values for MXINT8 elements)."""
    values = np.asarray(values)
    return values if values.dtype == np.int8 else values.view(np.uint8)


def _mx_quantize(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    elements, scales = microscaling.mx_quantize(i["x"], a["format"], block_size=a["block_size"], axis=a["axis"])
    return {"elements": _codes(elements), "scales": _codes(scales)}


def _nvfp4_quantize(i: Inputs, a: dict[str, Any], runtime: str) -> Outputs:
    quantized = microscaling.nvfp4_quantize(
        i["x"], i.get("per_tensor_scale"), block_size=a["block_size"], axis=a["axis"]
    )
    return dict(zip(("elements", "block_scales"), (_codes(value) for value in quantized)))


_RULES: dict[str, Callable[[Inputs, dict[str, Any], str], Outputs]] = {}
_RULES["onnx.QuantizeLinear"] = _quantize_linear
_RULES["onnx.DequantizeLinear"] = _dequantize_linear
_RULES["onnx.DynamicQuantizeLinear"] = _dynamic_quantize_linear
_RULES["onnx.MatMulInteger"] = _matmul_integer
_RULES["onnx.ConvInteger"] = _conv_integer
_RULES["onnx.QLinearMatMul"] = _qlinear_matmul
_RULES["onnx.QLinearConv"] = _qlinear_conv
_RULES["torch.quantize_per_tensor"] = _quantize_per_tensor
_RULES["torch.quantize_per_channel"] = _quantize_per_channel
_RULES["torch.fake_quantize_per_tensor_affine"] = _fake_quantize_per_tensor
_RULES["torch.fake_quantize_per_channel_affine"] = _fake_quantize_per_channel
_RULES["torch.MinMaxObserver"] = _min_max_observer
_RULES["tflite.QuantizeMultiplier"] = _quantize_multiplier
_RULES["tflite.MultiplyByQuantizedMultiplier"] = _multiply_by_quantized_multiplier
_RULES["tflite.Quantize"] = _tflite_quantize
_RULES["tflite.FullyConnected"] = _fully_connected
_RULES["tflite.Conv2D"] = _conv2d
_RULES["mx.quantize"] = _mx_quantize
_RULES["nvfp4.quantize"] = _nvfp4_quantize

#: The operators a case may name.
OPERATORS: tuple[str, ...] = tuple(_RULES)
