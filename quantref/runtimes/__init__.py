"""Bit-exact semantics of the runtimes people deploy quantized models to.

Each submodule mirrors one runtime's operators as named, ``jax.jit``-compatible functions whose integers match the
runtime's, including at rounding ties, at saturation and for NaN/Inf:

- :mod:`quantref.runtimes.onnx`: ONNX operators as onnxruntime's CPU execution provider computes them, with the
  ONNX reference evaluator's answers available where the two disagree (``flavor="reference"``).

The library never imports onnx or onnxruntime; those are needed only to cross-check (the ``conformance`` extra).
"""

from quantref.runtimes import onnx

__all__ = ["onnx"]
