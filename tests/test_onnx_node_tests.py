"""The ONNX project's own backend node tests for the quantization operators, run through run_model.

``onnx.backend.test.case.node.collect_testcases()`` (shipped in the onnx wheel) holds every node test of the ONNX
specification: a one-node model, its inputs and the outputs the specification expects. It imports its case modules
once, so the cases are collected once and filtered here. Every case whose model has a QuantizeLinear,
DequantizeLinear, DynamicQuantizeLinear, MatMulInteger, ConvInteger, QLinearMatMul or QLinearConv node (the
DynamicQuantizeLinear "expanded" cases too, which rebuild the operator from ReduceMin, Div, Clip, Round, Cast ...)
runs in run_model with the onnxruntime flavor where onnxruntime 1.32 runs the case — then onnxruntime's output is
checked as well — and with the reference flavor where it cannot (the opset-28 cases: float4e2m1, int2, float16
scales, a zero point of shape [1] beside a scalar scale). Every output must equal the expected one bit for bit.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the ONNX node tests need the conformance extra (onnx)")
ort = pytest.importorskip("onnxruntime", reason="the ONNX node tests need the conformance extra (onnxruntime)")
from onnx import numpy_helper  # noqa: E402

from quantref.runtimes import onnx_graph as qonnx_graph  # noqa: E402

OPERATORS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
}


def _cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return {case.name: case for case in cases if OPERATORS & {node.op_type for node in case.model.graph.node}}


CASES = _cases()


def _array(value) -> np.ndarray:
    """A data set value as numpy: TensorProtos (float8, int4, int2, float4 values) through numpy_helper."""
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value)


def _onnxruntime(model, feeds):
    """onnxruntime's outputs, or None where it cannot load or run the model."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # its refusals are expected here
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, feeds)
    except Exception:  # NOT_IMPLEMENTED kernels, types the Python API cannot feed
        return None


def _runs_in_onnxruntime(case) -> bool:
    inputs, _ = case.data_sets[0]
    feeds = {value_info.name: _array(value) for value_info, value in zip(case.model.graph.input, inputs)}
    return _onnxruntime(case.model, feeds) is not None


def _same_bits(actual: np.ndarray, expected: np.ndarray) -> bool:
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        return False
    if actual.dtype.kind == "f":
        both_nan = np.isnan(actual) & np.isnan(expected)
        return bool(np.all(both_nan | (actual == expected) & (np.signbit(actual) == np.signbit(expected))))
    return actual.tobytes() == expected.tobytes()


def test_the_cases_are_collected():
    assert len(CASES) >= 45
    runs_in_onnxruntime = [name for name, case in CASES.items() if _runs_in_onnxruntime(case)]
    # onnxruntime 1.32 runs the DynamicQuantizeLinear, MatMulInteger, QLinearMatMul (float16 scales included),
    # QLinearConv and one ConvInteger case; the opset-28 QuantizeLinear/DequantizeLinear cases only in the reference.
    assert len(runs_in_onnxruntime) >= 17
    operators = {node.op_type for case in CASES.values() for node in case.model.graph.node}
    assert OPERATORS <= operators


@pytest.mark.parametrize("name", sorted(CASES))
def test_node_case(name):
    case = CASES[name]
    model = case.model
    for inputs, outputs in case.data_sets:
        feeds = {value_info.name: _array(value) for value_info, value in zip(model.graph.input, inputs)}
        expected = [_array(value) for value in outputs]
        from_onnxruntime = _onnxruntime(model, feeds)
        flavor = "onnxruntime" if from_onnxruntime is not None else "reference"
        got = list(qonnx_graph.run_model(model, feeds, flavor=flavor).values())
        assert len(got) == len(expected)
        for actual, wanted in zip(got, expected):
            assert _same_bits(actual, wanted), (flavor, actual, wanted)
        if from_onnxruntime is not None:
            for actual, wanted in zip(got, from_onnxruntime):
                assert _same_bits(actual, np.asarray(wanted)), ("onnxruntime", actual, wanted)
