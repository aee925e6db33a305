"""Bit-exact semantics of the runtimes people deploy quantized models to.

Each submodule mirrors one runtime's operators as named, ``jax.jit``-compatible functions whose integers match the
runtime's, including at rounding ties, at saturation and for NaN/Inf:

- :mod:`quantref.runtimes.onnx`: ONNX operators as onnxruntime's CPU execution provider computes them, with the
  ONNX reference evaluator's answers available where the two disagree (``flavor="reference"``).
- :mod:`quantref.runtimes.torch`: PyTorch 2.13's CPU (x86/fbgemm) quantize, fake-quantize and MinMaxObserver.
- :mod:`quantref.runtimes.tflite`: TFLite/LiteRT's fixed-point requantization (gemmlowp), reference Quantize kernel,
  and int8 fully-connected and conv references.

The library never imports onnx, onnxruntime or torch; those are needed only to cross-check (the ``conformance``
extra).
"""

from quantref.runtimes import onnx, tflite, torch

__all__ = ["onnx", "tflite", "torch"]
