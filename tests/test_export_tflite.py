"""The .tflite export against the live LiteRT interpreter: every kernel set predicted bit for bit.

Hand-made integer networks (random int8 weights, chosen scales) are written with quantref's own flatbuffer writer,
read back with the schema reader that ships with LiteRT, and run with the three op resolvers; the output of each
must equal :func:`quantref.export.tflite.predict` for that kernel set — quantref's integer path in the kernel set's
mode — with zero differing codes, and so must the plain numpy reference of tests/litert_reference.py.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest

litert = pytest.importorskip(
    "ai_edge_litert.interpreter", reason="ai-edge-litert is not installed (pip install 'quantref[litert]')"
)
schema_reader = pytest.importorskip("ai_edge_litert.schema_py_generated", reason="ai-edge-litert ships no schema")


import litert_reference as reference  # noqa: E402

from quantref import integer, nn, ptq  # noqa: E402
from quantref.export import tflite  # noqa: E402  (needs the optional flatbuffers package)
from quantref.runtimes import litert as qlitert  # noqa: E402


def _run(model: bytes, x: np.ndarray, kernels: str) -> np.ndarray:
    resolver = getattr(litert.OpResolverType, tflite.RESOLVERS[kernels])
    interpreter = litert.Interpreter(model_content=model, experimental_op_resolver_type=resolver)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _mismatches(
    network: tflite.Network, x: np.ndarray, io: str = "float", predicted: tuple[str, ...] = tflite.KERNELS
) -> dict[str, int]:
    """Per kernel set, how many outputs of LiteRT differ from the numpy reference and, for the kernel sets in
    ``predicted``, from quantref's prediction (its integer path; compiled once per network structure, so tests of
    many structures predict one kernel set each and leave the others to the numpy reference)."""
    model = tflite.model_bytes(network, io=io)
    counts = {}
    for kernels in tflite.KERNELS:
        got = _run(model, x, kernels).view(np.uint8)
        counts[f"{kernels}: numpy"] = int(
            np.sum(got != reference.predict_network(network, x, kernels, io).view(np.uint8))
        )
        if kernels in predicted:
            quantref = tflite.predict(network, x, kernels=kernels, io=io).view(np.uint8)
            counts[f"{kernels}: quantref"] = int(np.sum(got != quantref))
    return counts


def _assert_bit_exact(network: tflite.Network, x: np.ndarray, io: str = "float", **kwargs) -> None:
    counts = _mismatches(network, x, io, **kwargs)
    assert not any(counts.values()), f"differing outputs: {counts}"


def _codes(network: tflite.Network, x: np.ndarray) -> np.ndarray:
    """The int8 codes fed to an int8-I/O model: TFLite's reference QUANTIZE."""
    return np.asarray(qlitert.quantize(x, network.input.scale, network.input.zero_point, "int8", "reference"))


def _cnn(
    seed: int,
    *,
    size: int = 8,
    channels: int = 1,
    per_channel: bool = True,
    relu: bool = True,
    padding: str = "SAME",
    strides: tuple[int, int] = (1, 1),
) -> tflite.Network:
    """conv → conv → max-pool → flatten → dense, the walkthrough CNN's shape, with random int8 weights."""
    rng = np.random.default_rng(seed)

    def scales(n: int) -> np.ndarray:
        return (rng.uniform(0.5, 2.0, n if per_channel else ()) * 0.01).astype(np.float32)

    def kernel(shape) -> np.ndarray:
        return rng.integers(-127, 128, shape).astype(np.int8)

    def bias(n: int, high: int) -> np.ndarray:
        return rng.integers(-high, high, n).astype(np.int32)

    c1, c2 = 8, 16
    after_conv1 = -(-size // strides[0]) if padding == "SAME" else (size - 3) // strides[0] + 1
    flat = (after_conv1 // 2) ** 2 * c2
    # Post-ReLU activations are calibrated on [0, max], so their zero point is -128; without ReLU any zero point.
    layers = (
        tflite.Conv2D(
            "conv1",
            kernel((3, 3, channels, c1)),
            scales(c1),
            bias(c1, 2000),
            tflite.Quant(0.05, -128 if relu else 3),
            strides,
            padding,
            relu,
        ),  # fmt: skip
        tflite.Conv2D(
            "conv2",
            kernel((3, 3, c1, c2)),
            scales(c2),
            bias(c2, 2000),
            tflite.Quant(0.2, -128 if relu else -5),
            (1, 1),
            "SAME",
            relu,
        ),  # fmt: skip
        tflite.MaxPool2D("pool", (2, 2), (2, 2)),
        tflite.Flatten("flatten"),
        tflite.FullyConnected("dense", kernel((flat, 10)), scales(10), bias(10, 5000), tflite.Quant(0.3, 7)),
    )
    return tflite.Network((size, size, channels), tflite.Quant(4 / 255, -100), layers)


def _inputs(network: tflite.Network, n: int = 33, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Beyond the input's range [-0.1, 0.9] on both sides, so that the input quantizer saturates too.
    return rng.uniform(-0.5, 1.5, (n, *network.input_shape)).astype(np.float32)


# --- the file --------------------------------------------------------------------------------------------------


def test_schema_reader_reads_back_what_was_written():
    network = _cnn(0)
    model = schema_reader.Model.GetRootAs(tflite.model_bytes(network), 0)
    assert schema_reader.Model.ModelBufferHasIdentifier(tflite.model_bytes(network), 0)
    assert model.Version() == 3 and model.SubgraphsLength() == 1
    codes = [model.OperatorCodes(i).BuiltinCode() for i in range(model.OperatorCodesLength())]
    op = schema_reader.BuiltinOperator
    graph = model.Subgraphs(0)
    ops = [codes[graph.Operators(i).OpcodeIndex()] for i in range(graph.OperatorsLength())]
    assert ops == [
        op.QUANTIZE, op.CONV_2D, op.CONV_2D, op.MAX_POOL_2D, op.RESHAPE, op.FULLY_CONNECTED, op.DEQUANTIZE
    ]  # fmt: skip
    tensors = {graph.Tensors(i).Name().decode(): graph.Tensors(i) for i in range(graph.TensorsLength())}
    types = schema_reader.TensorType
    assert tensors["x"].Type() == types.FLOAT32 and tensors["output"].Type() == types.FLOAT32
    assert list(tensors["x"].ShapeSignatureAsNumpy()) == [-1, 8, 8, 1]

    conv1 = network.layers[0]
    kernel = tensors["conv1/kernel"]
    assert kernel.Type() == types.INT8 and list(kernel.ShapeAsNumpy()) == [8, 3, 3, 1]  # OHWI
    quantization = kernel.Quantization()
    np.testing.assert_array_equal(quantization.ScaleAsNumpy(), conv1.kernel_scale)
    np.testing.assert_array_equal(quantization.ZeroPointAsNumpy(), np.zeros(8))
    assert quantization.QuantizedDimension() == 0
    data = model.Buffers(kernel.Buffer()).DataAsNumpy()
    np.testing.assert_array_equal(data.view(np.int8).reshape(8, 3, 3, 1), np.transpose(conv1.kernel, (3, 0, 1, 2)))
    bias = tensors["conv1/bias"]
    assert bias.Type() == types.INT32
    np.testing.assert_array_equal(model.Buffers(bias.Buffer()).DataAsNumpy().view("<i4"), conv1.bias)
    np.testing.assert_allclose(bias.Quantization().ScaleAsNumpy(), np.float32(4 / 255) * conv1.kernel_scale, rtol=1e-6)
    assert tensors["conv1/output"].Quantization().ZeroPointAsNumpy()[0] == -128

    conv_op = graph.Operators(1)
    assert conv_op.BuiltinOptionsType() == schema_reader.BuiltinOptions.Conv2DOptions
    options = schema_reader.Conv2DOptions()
    options.Init(conv_op.BuiltinOptions().Bytes, conv_op.BuiltinOptions().Pos)
    assert options.Padding() == schema_reader.Padding.SAME
    assert options.FusedActivationFunction() == schema_reader.ActivationFunctionType.RELU
    assert (options.StrideH(), options.StrideW()) == (1, 1)


def test_constant_buffers_are_aligned():
    model_bytes = tflite.model_bytes(_cnn(1))
    model = schema_reader.Model.GetRootAs(model_bytes, 0)
    for i in range(1, model.BuffersLength()):
        buffer = model.Buffers(i)
        start = buffer._tab.Vector(buffer._tab.Offset(4))
        assert start % 16 == 0, f"buffer {i} starts at {start}"


def test_loads_with_no_warnings(capfd):
    network = _cnn(2)
    for io in ("float", "int8"):
        x = _inputs(network, 2)
        if io == "int8":
            x = _codes(network, x)
        for kernels in tflite.KERNELS:
            _run(tflite.model_bytes(network, io=io), x, kernels)
    err = capfd.readouterr().err
    problems = [line for line in err.splitlines() if line.strip() and not line.startswith("INFO:")]
    assert problems == []


def test_int8_io_has_int8_ends():
    network = _cnn(3)
    interpreter = litert.Interpreter(model_content=tflite.model_bytes(network, io="int8"))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert inp["quantization"] == (np.float32(4 / 255), -100)
    assert out["quantization"] == (np.float32(0.3), 7)


# --- LiteRT computes what quantref predicts -------------------------------------------------------------------


_CONFIGS = {
    "per-channel": {},
    "per-tensor": {"per_channel": False},
    "no-relu": {"relu": False},
    "valid-stride2": {"relu": False, "padding": "VALID", "strides": (2, 2), "size": 9, "channels": 3},
    "same-stride2-odd": {"strides": (2, 2), "size": 9},  # SAME, odd total padding: the extra row goes at the bottom
}


@pytest.mark.parametrize("name", list(_CONFIGS))
@pytest.mark.parametrize("io", ["float", "int8"])
def test_every_kernel_set_is_predicted_bit_for_bit(name, io):
    network = _cnn(10, **_CONFIGS[name])
    x = _inputs(network)  # 33 images: 9 x 9 inputs leave a scalar tail in the optimized QUANTIZE
    if io == "int8":
        x = _codes(network, x)
    # quantref predicts every kernel set of the first network, and one (in turn) of each other.
    index = list(_CONFIGS).index(name) + (io == "int8")
    predicted = tflite.KERNELS if (name, io) == ("per-channel", "float") else (tflite.KERNELS[index % 3],)
    _assert_bit_exact(network, x, io, predicted=predicted)


def test_batch_of_one_and_adversarial_inputs():
    network = _cnn(11)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, 1e6, -1e6, 3e38, -3e38, 2.0**31, 1e-40]
    uniform = np.stack([np.full(network.input_shape, v, np.float32) for v in special])
    # 33 images, as _inputs gives: the per-channel network of the test above, so its compiled predictions serve.
    _assert_bit_exact(network, np.concatenate([uniform, _inputs(network, 33 - len(special))]))
    mixed = np.resize(np.array(special, np.float32), (1, *network.input_shape))
    _assert_bit_exact(network, mixed, predicted=("optimized",))


@pytest.mark.parametrize("zero_point", [5, -5])
def test_quantize_kernels_out_of_range(zero_point):
    """QUANTIZE alone: ties, NaN, ±Inf and huge values, which is where the three kernel sets part."""
    scale = np.float32(0.1)
    ties = (np.arange(-20, 20) + 0.5) * np.float64(scale)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, 1e6, -1e6]
    x = np.concatenate([ties, np.nextafter(ties.astype(np.float32), np.float32(np.inf)), special]).astype(np.float32)
    network = tflite.Network((x.size,), tflite.Quant(float(scale), zero_point), ())
    _assert_bit_exact(network, x[None])
    outputs = {k: tflite.predict(network, x[None], kernels=k) for k in tflite.KERNELS}
    assert np.any(outputs["reference"] != outputs["optimized"])  # ties: half away vs half to even
    assert np.any(outputs["optimized"] != outputs["xnnpack"])  # out of range: wrap vs saturate


@pytest.mark.parametrize("size", [1, 7, 8, 9, 17, 40])
def test_optimized_quantize_and_dequantize_depend_on_the_position(size):
    """The optimized kernels' 8-wide vector blocks and their scalar tail round differently (both predicted)."""
    scale = np.float32(0.1)
    ties = ((np.arange(-20, 20) + 0.5) * np.float64(scale)).astype(np.float32)
    x = np.resize(ties, size)[None]
    network = tflite.Network((size,), tflite.Quant(float(scale), 5), ())
    _assert_bit_exact(network, x)


@pytest.mark.parametrize("multiplier", [0.5, 0.25, 1 / 3])
@pytest.mark.parametrize("layer", ["conv", "dense"])
def test_requantization_at_exact_ties(layer, multiplier):
    """acc · M lands exactly on (or, after gemmlowp's first rounding, exactly at) a tie for many accumulators."""
    x = np.arange(-128, 128, dtype=np.int8)
    weights = np.array([1, -1], np.int8)
    kernel_scale = np.array([multiplier], np.float32)
    bias = np.array([0, 1], np.int32)
    output = tflite.Quant(1.0, -2)
    if layer == "conv":
        layers = (tflite.Conv2D("c", weights.reshape(1, 1, 1, 2), kernel_scale, bias, output, padding="VALID"),)
        network, x = tflite.Network((1, 1, 1), tflite.Quant(1.0, 3), layers), x.reshape(-1, 1, 1, 1)
    else:
        layers = (tflite.FullyConnected("d", weights.reshape(1, 2), kernel_scale, bias, output),)
        network, x = tflite.Network((1,), tflite.Quant(1.0, 3), layers), x.reshape(-1, 1)
    _assert_bit_exact(network, x, "int8")
    outputs = [tflite.predict(network, x, kernels=k, io="int8") for k in tflite.KERNELS]
    assert sum(np.any(a != b) for i, a in enumerate(outputs) for b in outputs[i + 1 :]) >= 2


# --- bad input --------------------------------------------------------------------------------------------------


def _dense(**changes) -> tflite.Network:
    fields = dict(
        name="d",
        kernel=np.ones((4, 2), np.int8),
        kernel_scale=np.float32(0.1),
        bias=np.zeros(2, np.int32),
        output=tflite.Quant(0.1, 0),
    )
    fields.update(changes)
    return tflite.Network((4,), tflite.Quant(0.1, 0), (tflite.FullyConnected(**fields),))


@pytest.mark.parametrize(
    ("network", "message"),
    [
        (_dense(kernel=np.full((4, 2), -128, np.int8)), r"\[-127, 127\]"),
        (_dense(kernel=np.ones((4, 2), np.int32)), "int8"),
        (_dense(kernel=np.ones((3, 2), np.int8)), "input features"),
        (_dense(bias=np.zeros(2, np.int64)), "int32"),
        (_dense(kernel_scale=np.float32(-1)), "positive"),
        (_dense(kernel_scale=np.ones(3, np.float32)), "one per output channel"),
        (_dense(output=tflite.Quant(0.1, 200)), "zero point"),
        (_dense(output=tflite.Quant(0.0, 0)), "positive"),
        (tflite.Network((4,), tflite.Quant(0.1, 0), ("relu",)), "cannot write"),
    ],
)
def test_bad_networks_are_refused(network, message):
    with pytest.raises(ValueError, match=message):
        tflite.model_bytes(network)


def test_bad_arguments_are_refused():
    network = _dense()
    with pytest.raises(ValueError, match="io"):
        tflite.model_bytes(network, io="uint8")
    with pytest.raises(ValueError, match="kernels"):
        tflite.predict(network, np.zeros((1, 4), np.float32), kernels="gpu")
    with pytest.raises(ValueError, match="shape"):
        tflite.predict(network, np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="int8"):
        tflite.predict(network, np.zeros((1, 4), np.float32), io="int8")
    with pytest.raises(ValueError, match="io"):
        tflite.predict(network, np.zeros((1, 4), np.float32), io="uint8")
    assert math.isclose(network.output.scale, 0.1)


# --- the pipeline: export_tflite ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qmodel_int8(folded, splits):
    return ptq.quantize_model(folded, splits.x_calib, activation_signed=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, qmodel_int8, folded, splits):
    out_dir = tmp_path_factory.mktemp("tflite")
    return tflite.export_tflite(qmodel_int8, out_dir, test_x=splits.x_test, test_y=splits.y_test, float_model=folded)


def _run_file(path, x: np.ndarray, kernels: str) -> np.ndarray:
    return _run(path.read_bytes(), x, kernels)


@pytest.mark.parametrize("kernels", tflite.KERNELS)
def test_litert_equals_expected_bitwise(exported, kernels):
    inputs, expected = np.load(exported["test_inputs"]), np.load(exported["expected"])
    got = _run_file(exported["model"], inputs["x"], kernels)
    want = expected[{"reference": "output", "optimized": "output_optimized", "xnnpack": "output_xnnpack"}[kernels]]
    assert got.dtype == np.float32 and got.shape == (300, 10) and inputs["y"].shape == (300,)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_walkthrough_far_from_the_test_set(qmodel_int8, splits):
    network = tflite.network_from_qmodel(qmodel_int8)
    rng = np.random.default_rng(0)
    cases = {
        "noise": rng.uniform(-2, 3, (32, 8, 8, 1)),
        "zeros": np.zeros((2, 8, 8, 1)),
        "max": np.ones((2, 8, 8, 1)),
        "saturating": np.array([1e9, -1e9, 300.0, -7.0, np.inf, -np.inf])[:, None, None, None] * np.ones((6, 8, 8, 1)),
        "one_image": np.full((1, 8, 8, 1), 0.5),
    }
    # One batch of the test split's size (the shape export_tflite compiled the integer path for), cases first.
    far = np.concatenate(list(cases.values())).astype(np.float32)
    x = np.concatenate([far, splits.x_test[: len(splits.x_test) - len(far)]])
    model = tflite.model_bytes(network)
    for kernels, mode in tflite.MODES.items():
        got = _run(model, x, kernels)
        output = integer.integer_forward(qmodel_int8, integer.multipliers(qmodel_int8, mode), x).output
        np.testing.assert_array_equal(got.view(np.uint32), np.asarray(output).view(np.uint32))
        np.testing.assert_array_equal(
            got.view(np.uint32), reference.predict_network(network, x, kernels).view(np.uint32)
        )


def test_walkthrough_int8_io(tmp_path, qmodel_int8, splits):
    paths = tflite.export_tflite(qmodel_int8, tmp_path / "int8", test_x=splits.x_test[:50], io="int8")
    inputs, expected = np.load(paths["test_inputs"]), np.load(paths["expected"])
    assert inputs["x_q"].dtype == np.int8 and "y" not in inputs
    for kernels, key in (("reference", "output"), ("optimized", "output_optimized"), ("xnnpack", "output_xnnpack")):
        np.testing.assert_array_equal(_run_file(paths["model"], inputs["x_q"], kernels), expected[key])


def test_float_tflite_and_sizes(exported, folded, splits, qmodel_int8):
    got = _run_file(exported["float"], splits.x_test, "optimized")
    np.testing.assert_allclose(got, np.asarray(folded(splits.x_test)), atol=1e-4)
    int8_size, float_size = exported["model"].stat().st_size, exported["float"].stat().st_size
    assert float_size > 2.5 * int8_size  # 4 bytes per weight against 1, and the same graph around them
    int8_accuracy = np.mean(np.load(exported["expected"])["output"].argmax(1) == splits.y_test)
    float_accuracy = np.mean(got.argmax(1) == splits.y_test)
    assert int8_accuracy >= float_accuracy - 0.02


def test_expected_is_the_integer_path_and_the_numpy_reference_agrees(exported, qmodel_int8, splits):
    """expected.npz is quantref.integer in each kernel set's mode; the numpy reference computes the same bits."""
    expected = np.load(exported["expected"])
    network = tflite.network_from_qmodel(qmodel_int8)
    for kernels, mode in tflite.MODES.items():
        key = {"reference": "output", "optimized": "output_optimized", "xnnpack": "output_xnnpack"}[kernels]
        output = integer.integer_forward(qmodel_int8, integer.multipliers(qmodel_int8, mode), splits.x_test).output
        np.testing.assert_array_equal(np.asarray(output).view(np.uint32), expected[key].view(np.uint32))
        numpy_reference = reference.predict_network(network, splits.x_test, kernels)
        np.testing.assert_array_equal(numpy_reference.view(np.uint32), expected[key].view(np.uint32))


def test_output_directory_rules(tmp_path, qmodel_int8, splits):
    x = splits.x_test[:4]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        tflite.export_tflite(qmodel_int8, out_dir, test_x=x)
    paths = tflite.export_tflite(qmodel_int8, out_dir, test_x=x, force=True)
    assert sorted(p.name for p in out_dir.iterdir()) == ["expected.npz", "model.tflite", "notes.txt", "test_inputs.npz"]
    assert set(paths) == {"model", "test_inputs", "expected"}
    with pytest.raises(ValueError, match="directory"):
        tflite.export_tflite(qmodel_int8, out_dir / "notes.txt", test_x=x)


def test_bad_export_input_is_refused(tmp_path, qmodel_int8, splits):
    uint8 = dataclasses.replace(qmodel_int8, activation_format=ptq.activation_format(8, signed=False))
    with pytest.raises(ValueError, match="activation_signed=True"):
        tflite.export_tflite(uint8, tmp_path / "a", test_x=splits.x_test[:2])
    with pytest.raises(ValueError, match="shape"):
        tflite.export_tflite(qmodel_int8, tmp_path / "b", test_x=splits.x_test[:2, :4])
    with pytest.raises(ValueError, match="io"):
        tflite.export_tflite(qmodel_int8, tmp_path / "c", test_x=splits.x_test[:2], io="uint8")
    assert not any(tmp_path.iterdir())  # nothing written


def _step(kind: str, index: int, input_shape: tuple[int, ...], path: str | None = None, **params) -> nn.Step:
    return nn.Step(kind, path, tuple({**params, "input_shape": input_shape}.items()), (index,))


# The trace of a chain the walkthrough CNN does not have: stride-2 SAME and VALID convolutions, a stride-1 max-pool,
# a hidden dense layer with ReLU (written out, so that the test needs no model to initialize and calibrate).
_STRIDED_CHAIN = nn.Trace(
    (
        _step("conv", 0, (8, 8, 1), "stem", strides=(2, 2), padding=((0, 1), (0, 1)), dilation=(1, 1), groups=1),
        _step("relu", 1, (4, 4, 8)),
        _step("conv", 2, (4, 4, 8), "body", strides=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), groups=1),
        _step("relu", 3, (3, 3, 12)),
        _step("max_pool", 4, (3, 3, 12), window=(2, 2), strides=(1, 1), padding=((0, 0), (0, 0))),
        _step("flatten", 5, (2, 2, 12)),
        _step("dense", 6, (48,), "hidden"),
        _step("relu", 7, (24,)),
        _step("dense", 8, (24,), "head"),
    ),
    (9,),
)
_KERNEL_SHAPES = {"stem": (3, 3, 1, 8), "body": (2, 2, 8, 12), "hidden": (48, 24), "head": (24, 10)}


def _random_qmodel(network: nn.Trace, kernel_shapes: dict, seed: int = 0) -> ptq.QuantizedModel:
    """A QuantizedModel of a traced structure with random codes and scales."""
    rng = np.random.default_rng(seed)
    layers, activations = {}, {}
    for path in network.layer_steps():
        shape = kernel_shapes[path]
        channels = shape[-1]
        kernel = jnp.asarray(rng.integers(-127, 128, shape), jnp.int8)
        scale = jnp.asarray(rng.uniform(0.5, 2.0, channels) * 0.5 / np.sqrt(np.prod(shape[:-1])), jnp.float32)
        layers[path] = ptq.LayerQuant(kernel, scale, jnp.asarray(rng.integers(-500, 500, channels), jnp.int32))
        activations[f"{path}.input"] = ptq.ActivationQuant(jnp.float32(rng.uniform(0.01, 0.05)), jnp.int32(-100))
    for path in network.output_layers():
        activations[f"{path}.output"] = ptq.ActivationQuant(jnp.float32(0.37), jnp.int32(3))
    return ptq.QuantizedModel(layers, activations, network, ptq.weight_format(8), ptq.activation_format(8, True))


def test_other_chains_export_bit_exact(splits):
    qmodel = _random_qmodel(_STRIDED_CHAIN, _KERNEL_SHAPES)
    network = tflite.network_from_qmodel(qmodel)
    assert [type(layer).__name__ for layer in network.layers] == [
        "Conv2D", "Conv2D", "MaxPool2D", "Flatten", "FullyConnected", "FullyConnected"
    ]  # fmt: skip
    assert network.layers[0].padding == "SAME" and network.layers[1].padding == "VALID"
    assert [getattr(layer, "relu", None) for layer in network.layers] == [True, True, None, None, True, False]
    _assert_bit_exact(network, splits.x_test[:64])


def _with_step(qmodel: ptq.QuantizedModel, index: int, step: nn.Step) -> ptq.QuantizedModel:
    steps = list(qmodel.network.steps)
    steps[index] = step
    return dataclasses.replace(qmodel, network=qmodel.network._replace(steps=tuple(steps)))


def test_structures_tflite_cannot_take_are_refused():
    qmodel = _random_qmodel(_STRIDED_CHAIN, _KERNEL_SHAPES)
    conv = qmodel.network.steps[0]
    params = dict(conv.params)
    cases = {
        "dilated": {**params, "dilation": (2, 2)},
        "neither TFLite's SAME": {**params, "padding": ((2, 0), (1, 1))},
    }
    for message, changed in cases.items():
        with pytest.raises(ValueError, match=message):
            tflite.network_from_qmodel(_with_step(qmodel, 0, conv._replace(params=tuple(changed.items()))))
    branch = nn.Step("add", None, (("input_shape", (4, 4, 8)),), (0,))
    with pytest.raises(ValueError, match="chain"):
        tflite.network_from_qmodel(_with_step(qmodel, 1, branch))
