"""quantref.runtimes.torch against live PyTorch 2.13 (CPU, x86/fbgemm): zero mismatching integers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch cross-check needs the 'conformance' extra (torch==2.13.0)")

from quantref.runtimes import torch as qtorch  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*deprecated:UserWarning"),
    pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max:UserWarning"),
]

F32 = np.float32
TORCH_DTYPES = {"quint8": torch.quint8, "qint8": torch.qint8, "qint32": torch.qint32}
RANGES = {"quint8": (0, 255), "qint8": (-128, 127), "qint32": (-(2**31), 2**31 - 1)}
ZERO_POINTS = {"quint8": [0, 3, 128, 255], "qint8": [-128, -7, 0, 5, 127], "qint32": [0, -7, 5, 12345, -99999]}
SCALES = [0.1, 1 / 3, 0.00214854861, 0.0071, 3.7, 2.0**-7]
SPECIALS = np.array(
    [np.nan, np.inf, -np.inf, 1e30, -1e30, 3e9, -3e9, 2.0**31, -(2.0**31), 0.0, -0.0, 1e-45, -1e-45, 9.3e18],
    F32,
)


def _ties(scale, n, rng, kmax=300):
    """x = (k + 1/2)·s in float32, its two float32 neighbours, and plain normal samples."""
    k = rng.integers(-kmax, kmax, n) + 0.5
    ties = (k * np.float64(F32(scale))).astype(F32)
    normal = (rng.standard_normal(n) * scale * kmax / 3).astype(F32)
    return np.concatenate([ties, np.nextafter(ties, F32(np.inf)), np.nextafter(ties, F32(-np.inf)), normal])


def _inv(scale):
    return F32(1) / F32(scale)


def _fma_reference(x, inv, zp):
    """f32(x·inv + zp) with one rounding, in numpy: exact float64 product, TwoSum, then fix float32 midpoints."""
    p = x.astype(np.float64) * np.float64(inv)  # exact: 24 + 24 bits
    c = np.float64(zp)
    s = p + c
    b_virtual = s - p
    err = (p - (s - b_virtual)) + (c - b_virtual)
    r = s.astype(F32)
    other = np.nextafter(r, np.where(s > r, F32(np.inf), F32(-np.inf)).astype(F32))
    tie = (s == (r.astype(np.float64) + other.astype(np.float64)) / 2) & (s != r)
    return np.where(tie & (err > 0), np.maximum(r, other), np.where(tie & (err < 0), np.minimum(r, other), r))


def _sat(values, dtype):
    lo, hi = RANGES[dtype]
    return np.clip(np.nan_to_num(values.astype(np.float64), nan=lo), lo, hi).astype(np.int64)


def _torch_per_tensor(x, scale, zp, dtype):
    return torch.quantize_per_tensor(torch.from_numpy(x), scale, zp, TORCH_DTYPES[dtype]).int_repr().numpy()


def _torch_per_channel(x, scales, zps, axis, dtype):
    t = torch.quantize_per_channel(
        torch.from_numpy(x), torch.tensor(scales), torch.tensor(zps), axis, TORCH_DTYPES[dtype]
    )
    return t.int_repr().numpy()


def _assert_same(actual, expected, context=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    if np.issubdtype(expected.dtype, np.floating):
        bad = actual.view(np.int32) != expected.view(np.int32)  # bitwise, so -0.0 and NaN count
    else:
        bad = actual.astype(np.int64) != expected.astype(np.int64)
    assert not bad.any(), (
        f"{context}: {bad.sum()} mismatches, e.g. at {np.argwhere(bad)[:3].tolist()}: "
        f"quantref {actual[bad][:3].tolist()} vs torch {expected[bad][:3].tolist()}"
    )


# ------------------------------------------------------------------------------------------------- quantize_per_tensor


@pytest.mark.parametrize("dtype", ["quint8", "qint8", "qint32"])
def test_quantize_per_tensor_ties_and_neighbours(dtype):
    rng = np.random.default_rng(0)
    differs_from = {"division": 0, "round_then_add": 0, "two_roundings": 0, "fma": 0}
    for scale in SCALES:
        for zp in ZERO_POINTS[dtype]:
            x = _ties(scale, 4000, rng)
            expected = _torch_per_tensor(x, scale, zp, dtype)
            _assert_same(qtorch.quantize_per_tensor(x, scale, zp, dtype), expected, f"{dtype} s={scale} zp={zp}")
            inv = _inv(scale)
            product = (x * inv).astype(F32)
            naive = {
                "division": np.rint((x / F32(scale)).astype(F32)) + zp,
                "round_then_add": np.rint(product) + zp,
                "two_roundings": np.rint((product + F32(zp)).astype(F32)),
                "fma": np.rint(_fma_reference(x, inv, zp)),
            }
            for name, values in naive.items():
                differs_from[name] += int((_sat(values, dtype) != expected).sum())
    # Teeth: each naive formula other than the one torch uses is caught by these inputs.
    torch_formula = "fma" if dtype != "qint32" else "two_roundings"
    assert differs_from[torch_formula] == 0
    assert all(count > 0 for name, count in differs_from.items() if name != torch_formula), differs_from


def test_quantize_per_tensor_hand_picked_fma_cases():
    # s = 0.1, zp = 3: x = 0.25 gives x·inv = 2.4999999 (f32 2.5 after rounding the product alone); with the zero
    # point fused in, 5.4999999 rounds to float32 5.5 and then to 6. Rounding first and adding zp would give 5.
    # x = 0.75000006: the fused sum rounds below 10.5 -> 10 + 1 = 11, while multiply-then-add rounds to 10.5 -> 10.
    x = np.array([0.25, 0.75000006], F32)
    assert _torch_per_tensor(x, 0.1, 3, "quint8").tolist() == [6, 11]
    assert np.asarray(qtorch.quantize_per_tensor(x, 0.1, 3, "quint8")).tolist() == [6, 11]
    # qint32 takes the scalar path with two roundings: the second case gives 10 there.
    assert _torch_per_tensor(x, 0.1, 3, "qint32").tolist() == [6, 10]
    assert np.asarray(qtorch.quantize_per_tensor(x, 0.1, 3, "qint32")).tolist() == [6, 10]


@pytest.mark.parametrize("dtype", ["quint8", "qint8", "qint32"])
def test_quantize_per_tensor_saturation_inf_nan(dtype):
    for zp in ZERO_POINTS[dtype]:
        for scale in (1.0, 0.02):
            for n in (len(SPECIALS), 64):  # the vector body and the scalar tail of fbgemm's loop
                x = np.resize(SPECIALS, n)
                _assert_same(
                    qtorch.quantize_per_tensor(x, scale, zp, dtype), _torch_per_tensor(x, scale, zp, dtype), dtype
                )
    lo, hi = RANGES[dtype]
    nan_code = hi if dtype != "qint32" else lo
    assert int(qtorch.quantize_per_tensor(np.array([np.nan], F32), 0.5, 0, dtype)[0]) == nan_code


@pytest.mark.parametrize("dtype", ["quint8", "qint8", "qint32"])
def test_quantize_per_tensor_fuzz(dtype):
    rng = np.random.default_rng(1)
    n = 120_000
    for scale, zp in ((0.0173, ZERO_POINTS[dtype][1]), (rng.uniform(1e-4, 10), ZERO_POINTS[dtype][-1])):
        x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n)).astype(F32)
        _assert_same(qtorch.quantize_per_tensor(x, scale, zp, dtype), _torch_per_tensor(x, scale, zp, dtype), dtype)


# ------------------------------------------------------------------------------------------------ quantize_per_channel


@pytest.mark.parametrize("dtype", ["quint8", "qint8", "qint32"])
def test_quantize_per_channel_ties_specials_axes(dtype):
    rng = np.random.default_rng(2)
    scales = np.array(SCALES[:5])
    zps = np.array(ZERO_POINTS[dtype][:5] + ZERO_POINTS[dtype][:1])[:5]
    columns = [_ties(s, 3000, rng) for s in scales]
    x = np.stack(columns, axis=1)
    x = np.concatenate([x, np.repeat(SPECIALS[:, None], 5, axis=1)])
    expected = _torch_per_channel(x, scales, zps, 1, dtype)
    _assert_same(qtorch.quantize_per_channel(x, scales, zps, 1, dtype), expected, dtype)
    _assert_same(qtorch.quantize_per_channel(x, scales, zps, -1, dtype), expected, dtype)
    x3 = np.ascontiguousarray(x[:3000].reshape(750, 4, 5).transpose(2, 0, 1))
    _assert_same(qtorch.quantize_per_channel(x3, scales, zps, 0, dtype), _torch_per_channel(x3, scales, zps, 0, dtype))
    # Teeth: per-channel rounds product and sum separately, so the fused per-tensor answer differs somewhere.
    per_tensor = np.stack(
        [np.asarray(qtorch.quantize_per_tensor(x[:, c], scales[c], int(zps[c]), dtype)) for c in range(5)], 1
    )
    assert (per_tensor != expected).any() or dtype == "qint32"
    nan_code = 0 if dtype != "qint32" else RANGES[dtype][0]  # low byte of x86's 0x80000000
    assert int(qtorch.quantize_per_channel(np.array([[np.nan]], F32), [0.5], [3], 1, dtype)[0, 0]) == nan_code


@pytest.mark.parametrize("dtype", ["quint8", "qint8", "qint32"])
def test_quantize_per_channel_fuzz(dtype):
    rng = np.random.default_rng(3)
    channels = 16
    x = (rng.standard_normal((8000, channels)) * 10.0 ** rng.uniform(-2, 2, (8000, channels))).astype(F32)
    scales = rng.uniform(1e-3, 1.0, channels)
    lo, hi = RANGES[dtype]
    zps = rng.integers(max(lo, -1000), min(hi, 1000) + 1, channels)
    _assert_same(
        qtorch.quantize_per_channel(x, scales, zps, 1, dtype), _torch_per_channel(x, scales, zps, 1, dtype), dtype
    )


# -------------------------------------------------------------------------------------------------------- fake quantize

FAKE_RANGES = [(0, 255), (-128, 127), (0, 15), (-8, 7), (0, 2**16 - 1), (-(2**15), 2**15 - 1)]


@pytest.mark.parametrize("quant_min,quant_max", FAKE_RANGES + [(-(2**31), 2**31 - 1)])
def test_fake_quantize_per_tensor_ties_specials(quant_min, quant_max):
    rng = np.random.default_rng(4)
    mismatches_if_divided = 0
    for scale in SCALES:
        zp = int(np.clip(3, quant_min, quant_max))
        x = np.concatenate([_ties(scale, 3000, rng), SPECIALS])
        expected = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), scale, zp, quant_min, quant_max).numpy()
        _assert_same(qtorch.fake_quantize_per_tensor_affine(x, scale, zp, quant_min, quant_max), expected, f"s={scale}")
        divided = np.clip(np.rint((x / F32(scale)).astype(F32)) + zp, quant_min, quant_max)
        finite = np.isfinite(x)
        mismatches_if_divided += int((((divided - zp) * F32(scale)).astype(F32) != expected)[finite].sum())
    assert mismatches_if_divided > 0  # x/s instead of x·(1/s) is caught


@pytest.mark.parametrize("quant_min,quant_max", FAKE_RANGES)
def test_fake_quantize_per_channel_ties_specials(quant_min, quant_max):
    rng = np.random.default_rng(5)
    scales = np.array(SCALES[:5], F32)
    zps = np.clip(np.array([3, 0, -5, 100, 7]), quant_min, quant_max).astype(np.int32)
    x = np.stack([_ties(s, 3000, rng) for s in scales], axis=1)
    x = np.concatenate([x, np.repeat(SPECIALS[:, None], 5, axis=1)])
    expected = torch.fake_quantize_per_channel_affine(
        torch.from_numpy(x), torch.from_numpy(scales), torch.from_numpy(zps), 1, quant_min, quant_max
    ).numpy()
    _assert_same(qtorch.fake_quantize_per_channel_affine(x, scales, zps, 1, quant_min, quant_max), expected)
    # +Inf goes to quant_min here (int64 overflow in the scalar kernel), unlike the per-tensor kernel.
    inf_out = qtorch.fake_quantize_per_channel_affine(np.array([[np.inf]], F32), [1.0], [0], 1, quant_min, quant_max)
    assert float(inf_out[0, 0]) == quant_min


def test_fake_quantize_fuzz():
    rng = np.random.default_rng(6)
    n = 120_000
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-2, 2, n)).astype(F32)
    expected = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), 0.0371, 7, -128, 127).numpy()
    _assert_same(qtorch.fake_quantize_per_tensor_affine(x, 0.0371, 7, -128, 127), expected)
    x2 = x.reshape(-1, 12)
    scales = rng.uniform(1e-3, 1, 12).astype(F32)
    zps = rng.integers(0, 256, 12).astype(np.int32)
    expected = torch.fake_quantize_per_channel_affine(
        torch.from_numpy(x2), torch.from_numpy(scales), torch.from_numpy(zps), 1, 0, 255
    ).numpy()
    _assert_same(qtorch.fake_quantize_per_channel_affine(x2, scales, zps, 1, 0, 255), expected)


# ------------------------------------------------------------------------------------------------------------ observer


def _observer_cases():
    rng = np.random.default_rng(7)
    cases = [
        np.zeros(10, F32),
        np.abs(rng.standard_normal(100)).astype(F32),
        -np.abs(rng.standard_normal(100)).astype(F32),
        np.full(5, 3.3, F32),
        np.array([1e-30], F32),
        np.array([-1e6, 1e-6], F32),
    ]
    for _ in range(60):
        size = int(rng.integers(1, 300))
        cases.append((rng.standard_normal(size) * 10.0 ** rng.uniform(-8, 4) + rng.uniform(-1, 1)).astype(F32))
    return cases


@pytest.mark.parametrize("dtype", ["quint8", "qint8", "qint32"])
@pytest.mark.parametrize("qscheme", ["per_tensor_affine", "per_tensor_symmetric"])
@pytest.mark.parametrize("reduce_range", [False, True])
def test_min_max_observer(dtype, qscheme, reduce_range):
    if qscheme == "per_tensor_symmetric" and reduce_range and dtype == "quint8":
        with pytest.raises(ValueError, match="reduce_range"):
            qtorch.min_max_observer(np.ones(3, F32), dtype, qscheme, reduce_range)
        return
    torch_qscheme = getattr(torch, qscheme)
    for x in _observer_cases():
        observer = torch.ao.quantization.MinMaxObserver(
            dtype=TORCH_DTYPES[dtype], qscheme=torch_qscheme, reduce_range=reduce_range
        )
        observer(torch.from_numpy(x))
        scale, zero_point = observer.calculate_qparams()
        # np.resize keeps min and max; one padded length means one compilation for all cases.
        ours_scale, ours_zp = qtorch.min_max_observer(np.resize(x, 512), dtype, qscheme, reduce_range)
        assert ours_scale.dtype == jnp.float32
        assert F32(ours_scale) == F32(scale.item()), (x[:4], float(ours_scale), scale.item())
        assert int(ours_zp) == int(zero_point.item()), (x[:4], int(ours_zp), zero_point.item())


def test_min_max_observer_documented_values():
    # all-zero input: scale = float32 eps, zero point = qmin
    scale, zp = qtorch.min_max_observer(np.zeros(4, F32), "quint8")
    assert float(scale) == 2.0**-23 and int(zp) == 0
    # symmetric 8-bit divides by 127.5, not 127
    scale, zp = qtorch.min_max_observer(np.array([-2.55, 1.0], F32), "qint8", "per_tensor_symmetric")
    assert float(scale) == float(F32(F32(2.55) / F32(127.5))) and int(zp) == 0
    _, zp = qtorch.min_max_observer(np.array([-2.55, 1.0], F32), "quint8", "per_tensor_symmetric")
    assert int(zp) == 128


# ------------------------------------------------------------------------------------------------------- jit, bad input


def test_jit_compatible():
    x = np.linspace(-3, 3, 1001, dtype=F32)
    direct = qtorch.quantize_per_tensor(x, 0.1, 3, "qint8")
    jitted = jax.jit(lambda v: qtorch.quantize_per_tensor(v, 0.1, 3, "qint8"))(x)
    _assert_same(jitted, direct)
    jitted = jax.jit(lambda v: qtorch.quantize_per_channel(v, np.array([0.1, 0.2]), np.array([0, 1]), 0, "quint8"))
    _assert_same(
        jitted(x[:1000].reshape(2, 500)),
        qtorch.quantize_per_channel(x[:1000].reshape(2, 500), [0.1, 0.2], [0, 1], 0, "quint8"),
    )


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: qtorch.quantize_per_tensor(np.ones(3, F32), 0.1, 0, "int8"), ValueError, "dtype"),
        (lambda: qtorch.quantize_per_tensor(np.ones(3, F32), 0.0, 0, "quint8"), ValueError, "scale"),
        (lambda: qtorch.quantize_per_tensor(np.ones(3, F32), -1.0, 0, "quint8"), ValueError, "scale"),
        (lambda: qtorch.quantize_per_tensor(np.ones(3, F32), float("nan"), 0, "quint8"), ValueError, "scale"),
        (lambda: qtorch.quantize_per_tensor(np.ones(3, F32), 1e-45, 0, "quint8"), ValueError, "scale"),
        (lambda: qtorch.quantize_per_tensor(np.ones(3, F32), 0.1, 256, "quint8"), ValueError, "zero_point"),
        (lambda: qtorch.quantize_per_tensor(np.ones(3, F32), 0.1, 1.5, "quint8"), TypeError, "zero_point"),
        (lambda: qtorch.quantize_per_tensor(np.ones(3, np.int32), 0.1, 0, "quint8"), TypeError, "x"),
        (
            lambda: qtorch.quantize_per_channel(np.ones((2, 3), F32), [0.1, 0.1], [0, 0], 1, "qint8"),
            ValueError,
            "scales",
        ),
        (
            lambda: qtorch.quantize_per_channel(np.ones((2, 3), F32), [0.1] * 3, [0, 0], 1, "qint8"),
            ValueError,
            "zero_points",
        ),
        (lambda: qtorch.quantize_per_channel(np.ones((2, 3), F32), [0.1] * 3, [0] * 3, 2, "qint8"), ValueError, "axis"),
        (
            lambda: qtorch.quantize_per_channel(np.ones((2, 3), F32), [0.1, 0, 1], [0] * 3, 1, "qint8"),
            ValueError,
            "scales",
        ),
        (
            lambda: qtorch.quantize_per_channel(np.ones((2, 3), F32), [0.1] * 3, [0, 0, 300], 1, "qint8"),
            ValueError,
            "zero_points",
        ),
        (lambda: qtorch.fake_quantize_per_tensor_affine(np.ones(3, F32), 0.1, 0, 5, 1), ValueError, "quant_min"),
        (lambda: qtorch.fake_quantize_per_tensor_affine(np.ones(3, F32), 0.1, 300, 0, 255), ValueError, "zero_point"),
        (
            lambda: qtorch.fake_quantize_per_channel_affine(np.ones((2, 3), F32), [1.0] * 3, [0] * 3, 1, 0, 2**24),
            ValueError,
            "2\\*\\*24",
        ),
        (lambda: qtorch.min_max_observer(np.ones(3, F32), "quint8", "per_channel_affine"), ValueError, "qscheme"),
        (lambda: qtorch.min_max_observer(np.zeros(0, F32)), ValueError, "non-empty"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


SUBNORMAL_MESSAGE = "JAX flushes subnormal float32 to zero on CPU, so results would not match"


def test_subnormal_scales_are_rejected():
    x = np.float32([3e-39, 6e-39, 1.0])
    # torch answers with the subnormal scale; a flushing implementation could not.
    live = torch.quantize_per_tensor(torch.from_numpy(x), 3e-39, 0, torch.qint8).int_repr().numpy()
    np.testing.assert_array_equal(live, np.int8([1, 2, 127]))
    with pytest.raises(ValueError, match=f"scale.*{SUBNORMAL_MESSAGE}"):
        qtorch.quantize_per_tensor(x, 3e-39, 0, "qint8")
    with pytest.raises(ValueError, match=f"scales.*{SUBNORMAL_MESSAGE}"):
        qtorch.quantize_per_channel(x.reshape(3, 1), np.float32([1.0, 1e-38, 1.0]), np.int32([0, 0, 0]), 0, "qint8")
    with pytest.raises(ValueError, match=f"scale.*{SUBNORMAL_MESSAGE}"):
        qtorch.fake_quantize_per_tensor_affine(x, 1e-38, 0, -128, 127)
    with pytest.raises(ValueError, match=SUBNORMAL_MESSAGE):
        qtorch.fake_quantize_per_channel_affine(x.reshape(3, 1), np.float32([5e-39]), np.int32([0]), 1, -128, 127)


def test_smallest_normal_scale_still_matches_torch():
    tiny = float(np.finfo(np.float32).tiny)
    x = np.float32([tiny, 2.5 * tiny, 100 * tiny, -3 * tiny])
    live = torch.quantize_per_tensor(torch.from_numpy(x), tiny, 0, torch.qint8).int_repr().numpy()
    np.testing.assert_array_equal(np.asarray(qtorch.quantize_per_tensor(x, tiny, 0, "qint8")), live)
