"""What a C/C++ float → int32 conversion gives on x86-64, shared by the runtime modules.

``static_cast<int32_t>(v)`` and numpy's ``astype(np.int32)`` compile to ``cvttss2si`` / ``cvttps2dq``: in-range
values truncate toward zero, and NaN or anything outside ``[-2^31, 2^31)`` gives the "integer indefinite" value
INT32_MIN. The C++ standard leaves those cases undefined; onnxruntime's reference evaluator (numpy), PyTorch and
TFLite built for x86-64 all hit this instruction, and an ARM build saturates instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from quantref._validate import INT32_MIN


def float_to_int32(value: jax.Array) -> jax.Array:
    """Convert integer-valued floats to int32 as x86-64 does: NaN and out-of-range values become INT32_MIN.

    Args:
      value: floats already rounded to integers (or NaN / ±Inf).

    Returns:
      int32 values.
    """
    in_range = (value >= -(2.0**31)) & (value < 2.0**31)
    # The inner where keeps XLA's own (saturating) conversion away from the values replaced anyway.
    return jnp.where(in_range, jnp.where(in_range, value, 0.0).astype(jnp.int32), jnp.int32(INT32_MIN))
