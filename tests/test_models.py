"""Tests for quantref.models: shapes, eval-mode determinism, accuracy."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings

from quantref import models


@pytest.fixture(scope="module")
def model() -> models.DigitsCNN:
    return models.DigitsCNN(rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def images() -> jax.Array:
    return jax.random.uniform(jax.random.key(1), (5, 8, 8, 1))


def test_logits_shape(model, images):
    assert model(images).shape == (5, 10)


def test_layers_are_named_attributes(model):
    assert model.conv1.kernel.shape == (3, 3, 1, 16)
    assert model.conv2.kernel.shape == (3, 3, 16, 32)
    assert model.dense.kernel.shape == (512, 10)
    assert model.bn1.mean.shape == (16,)
    assert model.bn2.var.shape == (32,)


def test_eval_mode_is_deterministic_and_leaves_statistics_alone(images):
    model = models.DigitsCNN(rngs=nnx.Rngs(0))
    mean_before = np.asarray(model.bn1.mean)
    first = model(images)
    second = model(images[::-1])[::-1]
    np.testing.assert_array_equal(model.bn1.mean, mean_before)
    # Each example's logits do not depend on the rest of the batch in eval mode.
    np.testing.assert_allclose(first, second, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(first, model(images))


def test_train_mode_updates_batch_norm_statistics(images):
    model = models.DigitsCNN(rngs=nnx.Rngs(0))
    model(images, train=True)
    assert not np.array_equal(model.bn1.mean, jnp.zeros(16))


def test_accuracy_counts_argmax_matches(model, images):
    predictions = np.asarray(jnp.argmax(model(images), axis=-1))
    assert models.accuracy(model, np.asarray(images), predictions) == 1.0
    assert models.accuracy(model, np.asarray(images), (predictions + 1) % 10) == 0.0


def _lax_conv(x, kernel, strides, padding, dilation):
    return jax.lax.conv_general_dilated(
        x, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=_layout(x.ndim - 2), precision="highest"
    )


@settings(max_examples=40, deadline=None)
@given(
    spatial=st.integers(1, 3),
    size=st.integers(1, 9),
    window=st.integers(1, 3),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    padding=st.sampled_from(["SAME", "VALID", "SAME_LOWER", "explicit", "negative"]),
    out_channels=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_tap_conv_equals_xla_convolution_over_one_channel(
    spatial, size, window, stride, dilation, padding, out_channels, seed
):
    """The taps compute XLA's convolution (to float32 rounding), its gradients too, for any geometry.

    Geometries the taps do not take (negative padding, an empty output) must give lax's result as well.
    """
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(2, *(size,) * spatial, 1)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(*(window,) * spatial, 1, out_channels)), jnp.float32)
    strides, dilations = (stride,) * spatial, (dilation,) * spatial
    pads = {"explicit": [(1, 2)] * spatial, "negative": [(-1, 1)] * spatial}.get(padding, padding)
    channels_last = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, _layout(spatial))
    taps = models.tap_conv(x, kernel, strides, pads, rhs_dilation=dilations, dimension_numbers=channels_last)
    expected = _lax_conv(x, kernel, strides, pads, dilations)
    assert taps.shape == expected.shape
    np.testing.assert_allclose(taps, expected, rtol=1e-5, atol=1e-5)
    traced = str(
        jax.make_jaxpr(lambda a, b: models.tap_conv(a, b, strides, pads, None, dilations, channels_last))(x, kernel)
    )
    assert ("conv_general_dilated" in traced) == (padding == "negative" or min(expected.shape[1:-1]) == 0)

    def loss(conv, x, kernel):
        return jnp.sum(jnp.sin(conv(x, kernel)))

    grads = jax.grad(
        lambda x, k: loss(lambda a, b: models.tap_conv(a, b, strides, pads, None, dilations, channels_last), x, k),
        argnums=(0, 1),
    )(x, kernel)
    expected_grads = jax.grad(
        lambda x, k: loss(lambda a, b: _lax_conv(a, b, strides, pads, dilations), x, k), argnums=(0, 1)
    )(x, kernel)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _layout(spatial):
    return {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}[spatial]


def test_tap_conv_hands_other_convolutions_to_xla_unchanged():
    """More than one input channel, groups or a channels-first layout: lax.conv_general_dilated, bit for bit."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 6, 6, 4)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 2, 6)), jnp.float32)
    numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
    for groups, k in ((1, jnp.concatenate([kernel, kernel], axis=2)), (2, kernel)):
        got = models.tap_conv(x, k, (1, 1), "SAME", dimension_numbers=numbers, feature_group_count=groups)
        want = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=numbers, feature_group_count=groups)
        np.testing.assert_array_equal(got, want)
    nchw = jnp.transpose(x[..., :1], (0, 3, 1, 2))
    oihw = jnp.transpose(kernel[:, :, :1], (3, 2, 0, 1))
    got = models.tap_conv(nchw, oihw, (1, 1), "SAME")
    np.testing.assert_array_equal(got, jax.lax.conv_general_dilated(nchw, oihw, (1, 1), "SAME"))


def test_tap_conv_forward_mode_derivatives_are_the_convolutions():
    """jvp and the Hessian go through the convolution's derivative: equal to lax.conv_general_dilated's."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 5, 5, 1)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 3)), jnp.float32)
    numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, _layout(2))

    def taps(x, k):
        return jnp.sum(jnp.tanh(models.tap_conv(x, k, (1, 1), "SAME", dimension_numbers=numbers)))

    def xla(x, k):
        return jnp.sum(jnp.tanh(_lax_conv(x, k, (1, 1), "SAME", (1, 1))))

    tangents = (jnp.ones_like(x), jnp.full_like(kernel, 0.5))
    np.testing.assert_allclose(jax.jvp(taps, (x, kernel), tangents)[1], jax.jvp(xla, (x, kernel), tangents)[1], 1e-5)
    np.testing.assert_allclose(jax.hessian(taps, 1)(x, kernel), jax.hessian(xla, 1)(x, kernel), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "case",
    [
        "bfloat16",
        "mixed dtypes",
        "zero dilation",
        "zero stride",
        "int stride",
        "empty kernel",
        "lhs_dilation too long",
        "list precision",
        "float padding",
        "int padding",
        "array padding",
    ],
)
def test_tap_conv_leaves_to_lax_what_the_taps_do_not_take(case):
    """Narrow dtypes get lax's result; malformed arguments get lax's own error, as they would without the taps."""
    x = jnp.ones((2, 6, 6, 1), jnp.float32)
    kernel = jnp.ones((3, 3, 1, 4), jnp.float32)
    numbers = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, _layout(2))
    arguments = {
        "bfloat16": ((x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), (1, 1), "SAME"), {}),
        "mixed dtypes": ((x.astype(jnp.bfloat16), kernel, (1, 1), "SAME"), {}),
        "zero dilation": ((x, kernel, (1, 1), "SAME"), {"rhs_dilation": (0, 1)}),
        "zero stride": ((x, kernel, (0, 1), "SAME"), {}),
        "int stride": ((x, kernel, 1, "SAME"), {}),
        "empty kernel": ((x, jnp.zeros((0, 3, 1, 4)), (1, 1), "VALID"), {}),
        "lhs_dilation too long": ((x, kernel, (1, 1), "SAME"), {"lhs_dilation": (1, 1, 1)}),
        "list precision": ((x, kernel, (1, 1), "SAME"), {"precision": [jax.lax.Precision.HIGHEST] * 2}),
        "float padding": ((x, kernel, (1, 1), [(1.5, 1), (1, 1)]), {}),
        "int padding": ((x, kernel, (1, 1), 1), {}),
        "array padding": ((x, kernel, (1, 1), jnp.array([[1, 2], [0, 1]])), {}),
    }[case]
    args, kwargs = arguments
    try:
        expected = jax.lax.conv_general_dilated(*args, dimension_numbers=numbers, **kwargs)
    except Exception as error:  # lax refuses: the taps must not compute something instead
        with pytest.raises(type(error)):
            models.tap_conv(*args, dimension_numbers=numbers, **kwargs)
    else:
        np.testing.assert_array_equal(models.tap_conv(*args, dimension_numbers=numbers, **kwargs), expected)


def test_conv1_runs_as_taps_and_matches_xla(model, images):
    """The model's conv1 (one input channel) goes through the taps: no convolution op in its jaxpr, same values."""
    jaxpr = jax.make_jaxpr(lambda x: model.conv1(x))(images)
    assert "conv_general_dilated" not in str(jaxpr)
    expected = _lax_conv(images, model.conv1.kernel[...], (1, 1), "SAME", (1, 1)) + model.conv1.bias[...]
    np.testing.assert_allclose(model.conv1(images), expected, rtol=1e-5, atol=1e-6)
    assert "conv_general_dilated" in str(jax.make_jaxpr(lambda x: model.conv2(x))(model.conv1(images)))


def test_training_step_is_the_xla_convolutions_bit_for_bit(images):
    """Train-mode logits and every gradient equal those of the same model with conv1 as lax.conv_general_dilated.

    The taps accumulate fma(tap, K, output) in the order XLA's CPU convolution does and take the convolution's own
    gradients, so training (and every cached model) is what it was before conv1 ran as taps.
    """
    taps = models.DigitsCNN(rngs=nnx.Rngs(3))
    xla = nnx.clone(taps)
    xla.conv1.conv_general_dilated = jax.lax.conv_general_dilated
    x = jax.random.normal(jax.random.key(4), (64, 8, 8, 1))
    labels = jax.random.randint(jax.random.key(5), (64,), 0, 10)

    def loss(model):
        logits = model(x, train=True)
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, labels[:, None], -1)[:, 0])

    step = nnx.jit(nnx.value_and_grad(loss))
    (loss_taps, grads_taps), (loss_xla, grads_xla) = step(taps), step(xla)
    assert loss_taps == loss_xla
    for got, want in zip(jax.tree.leaves(grads_taps), jax.tree.leaves(grads_xla), strict=True):
        np.testing.assert_array_equal(got, want)
