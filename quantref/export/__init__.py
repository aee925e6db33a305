"""Writing quantized models in the formats that real runtimes load.

- :mod:`quantref.export.onnx`: the quantized walkthrough CNN as an int8 QOperator ONNX graph (QuantizeLinear,
  QLinearConv, MaxPool, DequantizeLinear) that onnxruntime runs bit-exactly as :mod:`quantref.integer` predicts.

Submodules are imported on demand (``from quantref.export import onnx``): they need the ``conformance`` extra.
"""
