# %% [markdown]
# # 9. LiteRT: the TFLite walkthrough, done properly
#
# A popular write-up walks through quantizing a Keras model and converting it to TFLite. It calls
# `tf.keras.models.quantize_model`, which does not exist; it describes TFLite's integer scheme as uint8, which it
# is not; and it reports the quantized model's accuracy without ever measuring the float model's, so the number
# says nothing about what quantization cost. This chapter does that walkthrough the way it was meant: quantize the
# walkthrough CNN in TFLite's scheme, write a fully-integer `.tflite` file (no TensorFlow needed), run it in the
# live LiteRT interpreter (`ai-edge-litert`, TFLite's runtime), and measure what matters against a baseline —
# accuracy against the float model, bytes on disk against the float `.tflite`, and speed against the float
# `.tflite` in the same interpreter. Along the way, quantref predicts every output of the LiteRT run, bit for bit,
# for each of LiteRT's three sets of kernels.

# %%
import tempfile
import time
from pathlib import Path

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from quantref import data, integer, nn, ptq, train
from quantref.export import tflite
from quantref.runtimes import litert as qlitert
from quantref.runtimes import onnx as qonnx
from quantref.runtimes import tflite as qtflite

np.set_printoptions(precision=4, suppress=True)
splits = data.load_splits()
folded = nn.fold_batch_norm(train.load_or_train(progress=False), splits.x_calib[:1])

# %% [markdown]
# ## The baseline first
#
# The write-up's third error comes first here, because it is the easiest to avoid: an accuracy means something only
# next to the float model's, on the same held-out images. The float model (batch norm folded, chapter 7) on the
# 300 test images:

# %%
float_logits = np.asarray(folded(jnp.asarray(splits.x_test)))
float_accuracy = ptq.accuracy(float_logits, splits.y_test)
print(f"float model: test accuracy {float_accuracy:.2%} on {len(splits.y_test)} images")
print(f"one image is {1 / len(splits.y_test):.2%} of accuracy")

# %% [markdown]
# ## Step 1: quantize in TFLite's scheme — int8, not uint8
#
# TFLite's 8-bit quantization specification is **int8**: activations are int8 with any zero point (asymmetric),
# weights are int8 and symmetric (zero point 0) on the narrow grid $[-127, 127]$ with one scale per output channel,
# and biases are int32 with scale $s_{in} s_{w,c}$. uint8 was the scheme of TFLite's first, per-tensor
# quantization; describing today's TFLite as uint8 is the write-up's second error. In quantref it is one argument:
# `activation_signed=True`.

# %%
qmodel = ptq.quantize_model(folded, splits.x_calib, activation_signed=True)
for name, quant in qmodel.activations.items():
    print(f"{name:>13}: int8, scale {float(quant.scale):.6f}, zero point {int(quant.zero_point)}")
for path, layer in qmodel.layers.items():
    print(
        f"{path:>6}: weight codes in [{int(layer.kernel.min())}, {int(layer.kernel.max())}], "
        f"{np.size(layer.kernel_scale)} scales (one per output channel), int32 bias"
    )

# %% [markdown]
# A post-ReLU tensor is calibrated on $[0, \max]$, so real 0 sits at the bottom of the int8 grid: its zero point is
# $-128$, the value printed for conv2's and the dense layer's inputs, and a ReLU fused into the layer before is a
# clamp at that code. A uint8 model (chapter 7's, made for onnxruntime) is refused by the TFLite export, with the
# reason:

# %%
uint8_qmodel = ptq.quantize_model(folded, splits.x_calib)
try:
    tflite.network_from_qmodel(uint8_qmodel)
except ValueError as error:
    print("refused:", error)

# %% [markdown]
# ## Step 2: convert, without TensorFlow
#
# The write-up's first error is an API: `tf.keras.models` has no `quantize_model`. TensorFlow quantizes in one of
# two places — `tfmot.quantization.keras.quantize_model` (the Model Optimization Toolkit) wraps a Keras model for
# quantization-*aware training*, and post-training int8 is `tf.lite.TFLiteConverter` with
# `optimizations = [tf.lite.Optimize.DEFAULT]`, a `representative_dataset` for calibration and
# `target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]`. Either way the result is a flatbuffer in
# TFLite's schema, and that is all a runtime reads. quantref writes it directly from the quantized model: QUANTIZE,
# two CONV_2D with fused ReLU, MAX_POOL_2D, RESHAPE, FULLY_CONNECTED, DEQUANTIZE. `export_tflite` also writes the
# float model as `float.tflite`, the test inputs, and `expected.npz`: quantref's prediction of LiteRT's output.

# %%
out_dir = Path(tempfile.mkdtemp(prefix="quantref-litert-")) / "digits"
paths = tflite.export_tflite(qmodel, out_dir, test_x=splits.x_test, test_y=splits.y_test, float_model=folded)
model_file = schema.Model.GetRootAs(paths["model"].read_bytes(), 0)
graph = model_file.Subgraphs(0)
opcodes = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
types = {value: name for name, value in vars(schema.TensorType).items() if not name.startswith("_")}
builtin = [model_file.OperatorCodes(i).BuiltinCode() for i in range(model_file.OperatorCodesLength())]
for i in range(graph.OperatorsLength()):
    operator = graph.Operators(i)
    output = graph.Tensors(operator.Outputs(0))
    print(f"{opcodes[builtin[operator.OpcodeIndex()]]:<16} -> {output.Name().decode():<16} {types[output.Type()]}")
sizes = {name: paths[name].stat().st_size for name in ("model", "float")}
print(f"model.tflite {sizes['model']:,} bytes, float.tflite {sizes['float']:,} bytes: "
      f"{sizes['float'] / sizes['model']:.2f}x smaller")  # fmt: skip

# %% [markdown]
# Read back by the schema reader that ships with LiteRT, the file is what it should be: float32 at the two ends,
# int8 everywhere between. The int8 file is smaller by the ratio printed rather than by 4, because its scales,
# int32 biases and the graph's own bytes weigh more in a model of a few thousand weights than they would in a
# large one.
#
# ## Step 3: run it in LiteRT — three kernel sets
#
# LiteRT's interpreter runs a model with one of three kernel sets, picked by its op resolver: the **reference**
# kernels (`BUILTIN_REF`, plain C++ loops), the **optimized** builtin kernels (`BUILTIN_WITHOUT_DEFAULT_DELEGATES`,
# ruy's matrix kernels and vectorised quantization) and, by default, the **XNNPACK** delegate. They do not compute
# the same integers: they round differently (chapter 2's subject) in their requantization and in their QUANTIZE.
# quantref's integer path (chapter 7) has a mode for each — `"tflite"`, `"tflite-optimized"`, `"tflite-xnnpack"`
# — and `expected.npz` holds the three predictions. Running the file with each kernel set:


# %%
def interpreter(path: Path, kernels: str, batch: int) -> Interpreter:
    resolver = getattr(OpResolverType, tflite.RESOLVERS[kernels])
    runner = Interpreter(model_path=str(path), experimental_op_resolver_type=resolver, num_threads=1)
    runner.resize_tensor_input(runner.get_input_details()[0]["index"], [batch, 8, 8, 1])
    runner.allocate_tensors()
    return runner


def run(runner: Interpreter, x: np.ndarray) -> np.ndarray:
    runner.set_tensor(runner.get_input_details()[0]["index"], x)
    runner.invoke()
    return runner.get_tensor(runner.get_output_details()[0]["index"])


x_test = np.load(paths["test_inputs"])["x"]
expected = np.load(paths["expected"])
keys = {"reference": "output", "optimized": "output_optimized", "xnnpack": "output_xnnpack"}
outputs = {}
for kernels in tflite.KERNELS:
    outputs[kernels] = run(interpreter(paths["model"], kernels, len(x_test)), x_test)
    differing = int(np.sum(outputs[kernels].view(np.uint32) != expected[keys[kernels]].view(np.uint32)))
    print(
        f"{kernels:>9} ({tflite.RESOLVERS[kernels]}): {differing} of {outputs[kernels].size} logits differ "
        f"from quantref's prediction (mode {tflite.MODES[kernels]!r}), accuracy "
        f"{ptq.accuracy(outputs[kernels], splits.y_test):.2%}"
    )

# %% [markdown]
# Zero differing logits, bit for bit, with every kernel set. How far apart are the kernel sets themselves? They
# part where a value lands on (or, in float32, within rounding of) a tie — rare for any one value, but an image
# passes through thousands of requantizations, and one changed code moves every sum after it. On the test images,
# and on images far from the data (noise, saturating values, $\pm\infty$):

# %%


def disagreements(codes: dict[str, np.ndarray], label: str) -> None:
    for first, second in (("reference", "optimized"), ("reference", "xnnpack"), ("optimized", "xnnpack")):
        count = int(np.sum(codes[first] != codes[second]))
        print(f"{label}: {first} vs {second}: {count} of {codes[first].size} logit codes differ")


disagreements({kernels: outputs[kernels] for kernels in tflite.KERNELS}, "test images")
rng = np.random.default_rng(0)
far = np.concatenate(
    [
        rng.uniform(-2, 3, (200, 8, 8, 1)),
        np.array([1e9, -1e9, 300.0, -7.0, np.inf, -np.inf])[:, None, None, None] * np.ones((6, 8, 8, 1)),
        np.zeros((1, 8, 8, 1)),
    ]
).astype(np.float32)
far_codes = {}
for kernels in tflite.KERNELS:
    got = run(interpreter(paths["model"], kernels, len(far)), far)
    rescale = integer.multipliers(qmodel, tflite.MODES[kernels])
    prediction = integer.integer_forward(qmodel, rescale, far)
    far_codes[kernels] = np.asarray(prediction.output_q)
    differing = int(np.sum(got.view(np.uint32) != np.asarray(prediction.output).view(np.uint32)))
    print(f"{kernels:>9}: {differing} of {got.size} logits differ from quantref's prediction")
disagreements(far_codes, "far inputs")

# %% [markdown]
# The kernel sets disagree with one another on the counts printed, and quantref still predicts each one exactly.
# Where does the disagreement come from? Every requantization computes
# $\operatorname{round}(\mathrm{acc} \cdot M)$, and they break ties differently. With $M = 1/4$ every other
# accumulator lands on a tie; the picture shows the four rules side by side (the oracle functions that the integer
# path uses):

# %%
acc = np.arange(-12, 13, dtype=np.int32)
multiplier, shift = qtflite.quantize_multiplier(0.25)
rules = {
    "gemmlowp (reference CONV_2D)": qtflite.requantize(acc, multiplier, shift, 0, -128, 127),
    "ruy (optimized CONV_2D, FC)": qlitert.requantize_ruy(acc, multiplier, shift, 0, -128, 127),
    "float64, half away (reference FC)": qlitert.requantize_float64(acc, qlitert.encode_float64(0.25), 0, -128, 127),
    "float32, half even (XNNPACK)": qonnx.requantize(acc, np.float32(0.25), 0, -128, 127),
}
figure, axes = plt.subplots(1, len(rules), figsize=(13, 3), sharey=True)
ties = acc % 4 == 2  # acc / 4 ends in .5
for axis, (label, codes) in zip(axes, rules.items()):
    codes = np.asarray(codes)
    axis.plot(acc, acc * 0.25, color="lightgray", lw=1, label="exact acc/4")
    axis.plot(acc[~ties], codes[~ties], "o", ms=3, color="tab:blue", label="off a tie")
    axis.plot(acc[ties], codes[ties], "o", ms=5, color="tab:red", label="at a tie (x.5)")
    axis.set(title=label, xlabel="accumulator")
    axis.title.set_fontsize(9)
axes[0].set_ylabel("output code")
axes[0].legend(fontsize=7)
figure.tight_layout()
plt.show()
shown = (acc >= -10) & (acc <= 6)
print(f"{'acc':>18} " + " ".join(f"{a:>5}" for a in acc[shown]))
print(f"{'exact acc/4':>18} " + " ".join(f"{a / 4:>5.2f}" for a in acc[shown]))
for label, codes in rules.items():
    print(f"{label.split(' (')[0]:>18} " + " ".join(f"{int(c):>5}" for c in np.asarray(codes)[shown]))

# %% [markdown]
# At $-6/4 = -1.5$ gemmlowp gives $-2$ (its final shift rounds ties away from zero), ruy $-1$ (up), the float64
# rule $-2$ (away) and XNNPACK $-2$ (half to even); at $-10/4 = -2.5$ ruy and XNNPACK give $-2$, the other two
# $-3$. The two fixed-point rules also round *twice* (a rounding high multiply, then a rounding shift), so they miss
# off the ties too: gemmlowp takes $1/4 = 0.25$ to 1, ruy takes $-3/4 = -0.75$ to 0. The QUANTIZE
# kernels differ the same way (half away from zero in the reference kernel, half to even in the others), and the
# optimized kernel even rounds by position — blocks of 8 values of the flattened batch one way, the last few
# another. The conformance page counts these disagreements.
#
# ## Step 4: accuracy, against the float model
#
# The number the write-up printed on its own, now beside its baseline, with finer measures than accuracy (one
# image is a third of a point): how often the two models pick the same class, and the logits' signal-to-noise
# ratio against the float model's.

# %%
float_tflite = run(interpreter(paths["float"], "optimized", len(x_test)), x_test)
int8_logits = outputs["optimized"]
float_tflite_accuracy = ptq.accuracy(float_tflite, splits.y_test)
int8_accuracy = ptq.accuracy(int8_logits, splits.y_test)
print(f"float.tflite (LiteRT): {float_tflite_accuracy:.2%}  (the JAX float model: {float_accuracy:.2%})")
print(f"model.tflite (LiteRT): {int8_accuracy:.2%}")
change = int8_accuracy - float_tflite_accuracy
print(f"change: {change:+.2%} ({round(change * len(splits.y_test)):+d} images)")
agree = np.mean(int8_logits.argmax(1) == float_tflite.argmax(1))
sqnr = 10 * np.log10(np.sum(float_tflite**2) / np.sum((int8_logits - float_tflite) ** 2))
print(f"same class as float.tflite on {agree:.2%} of images; logit SQNR {sqnr:.1f} dB")

# %% [markdown]
# ## Step 5: speed, against the float `.tflite`
#
# Both files in the same interpreter, one thread, the median of repeated runs on the 300 test images; the ratio is
# int8 time over float time (below 1: the int8 model is faster). `benchmarks/tflite.py` measures the same for one
# image and for a large batch.


# %%
def median_ms(runner: Interpreter, repeats: int = 15) -> float:
    runner.invoke()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.invoke()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


print(f"{'kernels':>9} {'float ms':>9} {'int8 ms':>8} {'int8/float':>11}")
for kernels in tflite.KERNELS:
    times = {}
    for name in ("float", "model"):
        runner = interpreter(paths[name], kernels, len(x_test))
        runner.set_tensor(runner.get_input_details()[0]["index"], x_test)
        times[name] = median_ms(runner)
    print(f"{kernels:>9} {times['float']:>9.3f} {times['model']:>8.3f} {times['model'] / times['float']:>11.2f}")

# %% [markdown]
# The reference kernels are plain loops, written for clarity rather than speed; a deployment uses the optimized
# kernels or XNNPACK. The ratios are those measured on the machine that rendered this page: on a model this small,
# per-operator overhead weighs as much as the arithmetic, so whether and by how much int8 wins is a property of the
# kernels and the machine, which is why the speed is measured next to the float file rather than assumed.
#
# ## Exercises
#
# **Exercise 9.1.** Export the int8-I/O variant (`io="int8"`): the model then takes and returns int8 codes, with
# no QUANTIZE or DEQUANTIZE. Print its input tensor's dtype and quantization, feed it the codes stored in
# `test_inputs.npz`, and check the output against `expected.npz`.

# %% tags=["solution"]
int8_paths = tflite.export_tflite(qmodel, out_dir.parent / "int8", test_x=splits.x_test, io="int8")
runner = interpreter(int8_paths["model"], "optimized", len(splits.x_test))
details = runner.get_input_details()[0]
print("input:", details["dtype"].__name__, "scale, zero point:", details["quantization"])
codes = np.load(int8_paths["test_inputs"])["x_q"]
got = run(runner, codes)
print("int8 logits equal expected.npz:", np.array_equal(got, np.load(int8_paths["expected"])["output_optimized"]))

# %% [markdown]
# **Exercise 9.2.** Build a model that is nothing but a QUANTIZE and a DEQUANTIZE (`tflite.Network` with no
# layers) and find inputs on which LiteRT's reference and optimized kernels quantize differently. Which rounding
# rule does each follow?

# %% tags=["solution"]
scale = 0.5
quantizer = tflite.Network((8,), tflite.Quant(scale, 0), ())
x = (np.arange(8, dtype=np.float32) - 3.5) * np.float32(scale)  # -1.75 .. 1.75: codes -3.5 .. 3.5, all ties
model_bytes = tflite.model_bytes(quantizer)
for kernels in ("reference", "optimized"):
    resolver = getattr(OpResolverType, tflite.RESOLVERS[kernels])
    runner = Interpreter(model_content=model_bytes, experimental_op_resolver_type=resolver)
    runner.allocate_tensors()
    print(f"{kernels:>9}: x / s = {x[None] / scale} -> {run(runner, x[None]) / scale}")
# reference: half away from zero (std::round); optimized: half to even (a vector round-to-nearest).
