"""Writing quantized models in the formats that real runtimes load.

- :mod:`quantref.export.onnx`: the quantized walkthrough CNN as an int8 QOperator ONNX graph (QuantizeLinear,
  QLinearConv, MaxPool, DequantizeLinear) that onnxruntime runs bit-exactly as :mod:`quantref.integer` predicts.
- :mod:`quantref.export.tflite`: the same network as a fully-integer ``.tflite`` flatbuffer (int8 activations,
  per-channel int8 weights) that LiteRT runs bit-exactly as predicted, for its reference, optimized and XNNPACK
  kernels (the ``litert`` extra).

Submodules are imported on demand (``from quantref.export import onnx``): they need their runtime's extra.
"""
