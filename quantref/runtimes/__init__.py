"""Bit-exact semantics of the runtimes people deploy quantized models to.

Each submodule mirrors one runtime's operators as named, ``jax.jit``-compatible functions whose integers match the
runtime's, including at rounding ties, at saturation and for NaN/Inf:

- :mod:`quantref.runtimes.onnx`: ONNX operators as onnxruntime's CPU execution provider computes them, with the
  ONNX reference evaluator's answers available where the two disagree (``flavor="reference"``): QuantizeLinear,
  DequantizeLinear (float16 scales and FLOAT4E2M1 included), DynamicQuantizeLinear, and — from
  :mod:`quantref.runtimes.onnx_integer`, re-exported — MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv and
  their requantization (:func:`quantref.runtimes.onnx.requantize`).
- :mod:`quantref.runtimes.onnx_microsoft`: onnxruntime's ``com.microsoft`` quantized operators (QGemm, QLinearAdd,
  QLinearMul, QLinearConcat, QLinearSoftmax, the quantized pools and lookup-table activations).
- :mod:`quantref.runtimes.onnx_graph`: an interpreter for whole quantized ONNX graphs, QOperator and QDQ, compiled
  once and run jit'd (:func:`quantref.runtimes.onnx_graph.run_model`, :func:`~quantref.runtimes.onnx_graph.
  compile_model`; needs the ``onnx`` package), with onnxruntime's QDQ node-unit fusion
  (:mod:`quantref.runtimes.onnx_qdq`) and its operators' registries (:mod:`quantref.runtimes.onnx_ops`,
  :mod:`quantref.runtimes.onnx_float`).
- :mod:`quantref.runtimes.torch`: PyTorch 2.13's CPU (x86/fbgemm) quantize, fake-quantize and MinMaxObserver.
- :mod:`quantref.runtimes.tflite`: TFLite/LiteRT's fixed-point requantization (gemmlowp;
  :func:`quantref.runtimes.tflite.requantize`), reference Quantize kernel, and int8 fully-connected and conv
  references.

The runtimes depend only on the numerics (:mod:`quantref.formats`, :mod:`quantref.affine`), never on the model
pipeline. The library never imports onnx, onnxruntime or torch; those are needed only to cross-check (the
``conformance`` extra) and for :mod:`~quantref.runtimes.onnx_graph`.
"""

from quantref.runtimes import onnx, onnx_graph, onnx_integer, onnx_microsoft, onnx_qdq, tflite, torch

__all__ = ["onnx", "onnx_graph", "onnx_integer", "onnx_microsoft", "onnx_qdq", "tflite", "torch"]
