"""quantref.weight_only's traceable grid helpers (grid_bounds, grid_scales, grid_round) against group_scales and
quantize_kernel, which they must reproduce number for number (rtn_weights and AWQ's searches compute with them)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantref import formats, ptq, weight_only

GRIDS = [formats.int_format(3), formats.int_format(4), formats.int_format(8), ptq.weight_format(4)]


@pytest.mark.parametrize("fmt", GRIDS, ids=lambda fmt: f"{fmt.qmin}..{fmt.qmax}")
@pytest.mark.parametrize("group_size", [None, 32, 64])
def test_the_traceable_grid_is_group_scales_and_quantize_kernel(fmt, group_size):
    rng = np.random.default_rng(0)
    kernel = rng.standard_t(3, (128, 48)).astype(np.float32) * rng.uniform(1e-3, 1.0, 48).astype(np.float32)
    kernel[:, 0] = 0.0  # an all-zero column: the floored scale
    scale = jax.jit(weight_only.grid_scales, static_argnums=2)(kernel, weight_only.grid_bounds(fmt), group_size)
    np.testing.assert_array_equal(np.asarray(scale), np.asarray(weight_only.group_scales(kernel, fmt, group_size)))
    codes = weight_only.grid_round(jnp.asarray(kernel), scale, weight_only.grid_bounds(fmt))
    np.testing.assert_array_equal(np.asarray(codes), np.asarray(weight_only.quantize_kernel(kernel, scale, fmt)))


def test_rtn_weights_still_names_a_bad_group_size():
    from flax import nnx

    class Model(nnx.Module):
        def __init__(self):
            self.layer = nnx.Linear(48, 8, rngs=nnx.Rngs(0))

    model = Model()
    with pytest.raises(ValueError, match="group_size 7 must divide"):
        weight_only.rtn_weights(model, formats.int_format(4), 7)
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        weight_only.rtn_weights(model, formats.int_format(4), 0)
    with pytest.raises(ValueError):
        weight_only.grid_bounds(formats.int_format(4, signed=False))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rtn_and_gptq_weights_refuse_a_kernel_that_is_not_finite(bad):
    # Both round under jit, where a NaN would become a NaN scale without an error: they check first.
    from flax import nnx

    class Model(nnx.Module):
        def __init__(self):
            self.layer = nnx.Linear(16, 8, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.layer(x)

    model = Model()
    model.layer.kernel[...] = model.layer.kernel[...].at[0, 0].set(bad)
    with pytest.raises(ValueError, match="kernel of 'layer' must be finite"):
        weight_only.rtn_weights(model, formats.int_format(4), 8)
    batches = [np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)]
    with pytest.raises(ValueError, match="kernel of 'layer' must be finite"):
        weight_only.gptq_weights(model, batches, formats.int_format(4), 8)


def test_gptq_weights_refuses_calibration_inputs_that_are_not_finite():
    from flax import nnx

    class Model(nnx.Module):
        def __init__(self):
            self.layer = nnx.Linear(16, 8, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.layer(x)

    batch = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    batch[1, 3] = np.nan
    with pytest.raises(ValueError, match="calibration inputs of 'layer'.*finite"):
        weight_only.gptq_weights(Model(), [batch], formats.int_format(4), 8)
