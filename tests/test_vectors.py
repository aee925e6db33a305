"""quantref.vectors and the `quantref vectors` / `quantref check` commands: the round trip, the reports, the format,
and a cross-check of the stored expectations against live onnxruntime, the ONNX reference evaluator and torch."""

from __future__ import annotations

import json
import shutil
import zipfile

import ml_dtypes
import numpy as np
import pytest

from quantref import cli, vectors
from quantref.testing import assert_matches


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The vectors, written once, and quantref's own results for them."""
    root = tmp_path_factory.mktemp("vectors")
    out, results = root / "vectors", root / "results"
    vectors.write_vectors(out)
    vectors.compute_results(out, results)
    return out, results


@pytest.fixture(scope="module")
def manifest(written):
    return vectors.load_manifest(written[0])


def _perturbed_copy(results, tmp_path, case_id, output, index, delta):
    """A copy of the results with one element of one output moved by ``delta`` in its stored integer type."""
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    path = copy / f"{case_id}.npz"
    with np.load(path) as archive:
        arrays = {name: archive[name].copy() for name in archive.files}
    flat = arrays[output].reshape(-1)
    flat[index] = flat[index] + delta
    np.savez(path, **arrays)
    return copy


def test_round_trip_reports_zero_mismatches(written, capsys):
    out, results = written
    assert cli.main(["check", str(out), str(results)]) == 0
    text = capsys.readouterr().out
    assert "OK: " in text and " 0 failed, 0 missing" in text
    report = vectors.check(out, results)
    assert report.ok and report.count("pass") == len(report.cases) > 100


def test_vectors_are_deterministic(written, tmp_path):
    again = vectors.write_vectors(tmp_path / "again").parent
    first = sorted(p.relative_to(written[0]) for p in written[0].rglob("*") if p.is_file())
    assert first == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for relative in first:
        assert (written[0] / relative).read_bytes() == (again / relative).read_bytes(), relative


def test_one_lsb_perturbation_is_reported_at_its_case_and_index(written, tmp_path, capsys):
    out, results = written
    case_id = "onnx.QuantizeLinear.uint8.ties"
    perturbed = _perturbed_copy(results, tmp_path, case_id, "y", 37, 1)
    assert cli.main(["check", str(out), str(perturbed)]) == 1
    text = capsys.readouterr().out
    assert f"FAIL     {case_id}\n" in text
    assert "y: 1 of " in text and "largest |diff| 1 LSB" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("(37,)"))
    expected = int(vectors.load_case(out, _entry(out, case_id))[1]["y"][37])
    assert row.split() == ["(37,)", str(expected), str(expected + 1), "+1", "LSB"]
    assert "MISMATCH: " in text and "1 failed" in text


def _entry(out, case_id):
    return next(e for e in vectors.load_manifest(out)["cases"] if e["id"] == case_id)


@pytest.mark.parametrize(
    "case_id, index, unit",
    [
        ("onnx.QuantizeLinear.float8_e4m3fn.saturate", 5, "1 code"),  # a float8 output: one code up
        ("onnx.DequantizeLinear.uint8", 9, "1 ulp"),  # a float32 output: its bit pattern + 1 is one ulp up
        ("onnx.QuantizeLinear.int4.ties", 3, "LSB"),
    ],  # int4 stored as bit patterns
)
def test_perturbations_of_float8_float_and_int4_outputs(written, tmp_path, case_id, index, unit):
    out, results = written
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    path = copy / f"{case_id}.npz"
    with np.load(path) as archive:
        arrays = {name: archive[name].copy() for name in archive.files}
    stored = arrays["y"]
    bits = stored.view({1: np.uint8, 4: np.uint32}[stored.itemsize]).reshape(-1)
    bits[index] = (bits[index] + 1) if unit != "LSB" else bits[index] ^ 0x1  # int4: flip the low bit
    np.savez(path, **arrays)
    report = vectors.check(out, copy, cases=[case_id])
    (case,) = report.cases
    comparison = case.outputs["y"]
    assert case.status == "fail" and comparison.mismatches == 1
    assert comparison.worst[0].index == (index,) and abs(comparison.worst[0].diff) == 1
    assert unit in vectors.format_check(report)


def test_missing_results_are_reported(written, tmp_path, capsys):
    out, results = written
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    (copy / "torch.quantize_per_tensor.qint8.ties.npz").unlink()
    np.savez(copy / "onnx.DynamicQuantizeLinear.random.npz", y=np.zeros(1000, np.uint8))  # no y_scale, y_zero_point
    np.savez(copy / "not.a.case.npz", y=np.zeros(1))
    assert cli.main(["check", str(out), str(copy)]) == 1
    text = capsys.readouterr().out
    assert "MISSING  torch.quantize_per_tensor.qint8.ties: no results" in text
    assert "y_scale: missing from the results" in text and "y_zero_point: missing from the results" in text
    assert "'not.a.case' names no case" in text
    assert "1 missing" in text


def test_results_as_one_npz_file_and_case_selection(written, tmp_path, capsys):
    out, results = written
    arrays = {}
    for path in sorted(results.glob("onnx.MatMulInteger.*.npz")):
        with np.load(path) as archive:
            arrays.update({f"{path.stem}/{name}": archive[name] for name in archive.files})
    single = tmp_path / "results.npz"
    np.savez(single, **arrays)
    assert cli.main(["check", str(out), str(single), "--case", "onnx.MatMulInteger.*", "--verbose"]) == 0
    text = capsys.readouterr().out
    assert text.count("PASS ") == 4 and "OK: 4 passed" in text


def test_bad_input_gives_clear_errors(written, tmp_path, capsys):
    out, results = written
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(ValueError, match="not empty.*--force"):
        vectors.write_vectors(tmp_path / "busy")
    assert cli.main(["vectors", str(tmp_path / "busy")]) == 2
    assert "--force" in capsys.readouterr().err
    with pytest.raises(ValueError, match="does not exist"):
        vectors.check(tmp_path / "nowhere", results)
    with pytest.raises(ValueError, match="no manifest.json"):
        vectors.check(tmp_path / "busy", results)
    with pytest.raises(ValueError, match="RESULTS .* does not exist"):
        vectors.check(out, tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"unknown case\(s\) \['onnx.NoSuchOp'\]"):
        vectors.check(out, results, cases=["onnx.NoSuchOp"])
    assert cli.main(["check", str(out), str(results), "--case", "nope"]) == 2
    assert "unknown case" in capsys.readouterr().err


def test_manifest_documents_and_covers_the_cases(written, manifest):
    out, _ = written
    assert manifest["format"] == "quantref-vectors" and manifest["format_version"] == vectors.FORMAT_VERSION
    assert {"layout", "encoding", "results", "cases[]"} <= set(manifest["schema"])
    operators = {case["operator"] for case in manifest["cases"]}
    assert operators == {
        "onnx.QuantizeLinear",
        "onnx.DequantizeLinear",
        "onnx.DynamicQuantizeLinear",
        "onnx.MatMulInteger",
        "onnx.ConvInteger",
        "onnx.QLinearMatMul",
        "onnx.QLinearConv",
        "torch.quantize_per_tensor",
        "torch.quantize_per_channel",
        "torch.fake_quantize_per_tensor_affine",
        "torch.fake_quantize_per_channel_affine",
        "torch.MinMaxObserver",
        "tflite.QuantizeMultiplier",
        "tflite.MultiplyByQuantizedMultiplier",
        "tflite.Quantize",
        "tflite.FullyConnected",
        "tflite.Conv2D",
        "mx.quantize",
        "nvfp4.quantize",
    }
    quantize = [c for c in manifest["cases"] if c["operator"] == "onnx.QuantizeLinear"]
    output_types = {c["outputs"][0]["dtype"] for c in quantize}
    assert output_types == set(vectors.encoding.BIT_PATTERN_TYPES) | {"int8", "uint8", "int16", "uint16"}
    for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz"):
        assert {c["attributes"]["saturate"] for c in quantize if c["outputs"][0]["dtype"] == name} == {0, 1}
    assert {c["runtime"] for c in manifest["cases"]} == set(vectors.RUNTIMES)
    for case in manifest["cases"]:
        assert case["expectation"].startswith(vectors.RUNTIMES[case["runtime"]]["runtime"])
        with zipfile.ZipFile(out / case["file"]) as archive:  # a plain zip of .npy files
            names = {info.filename for info in archive.infolist()}
        assert names == {f"{spec['name']}.npy" for spec in case["inputs"] + case["outputs"]}
        for spec in case["inputs"] + case["outputs"]:
            assert spec["storage"] == (
                "uint8" if spec["dtype"] in vectors.encoding.BIT_PATTERN_TYPES else spec["dtype"]
            )


def test_stored_arrays_are_plain_numpy_and_decode_to_the_true_dtypes(written, manifest):
    out, _ = written
    entry = next(c for c in manifest["cases"] if c["id"] == "onnx.QuantizeLinear.int4.output_dtype")
    with np.load(out / entry["file"], allow_pickle=False) as archive:
        raw = archive["y"]
    assert raw.dtype == np.uint8 and raw.max() <= 0xF  # int4 as its bit pattern, one element per byte
    _, outputs = vectors.load_case(out, entry)
    assert outputs["y"].dtype == ml_dtypes.int4
    assert np.array_equal(outputs["y"].astype(np.int8) & 0xF, raw)
    assert json.loads((out / "manifest.json").read_text())["quantref_version"]


# ----------------------------------------------------------------------------------------------------------------
# The stored expectations against the live runtimes


ONNX_OPSET = {
    "DynamicQuantizeLinear": 21,
    "MatMulInteger": 21,
    "ConvInteger": 21,
    "QLinearMatMul": 21,
    "QLinearConv": 21,
}


def _onnx_attributes(entry, helper):
    attributes = dict(entry["attributes"])
    if "output_dtype" in attributes:
        dtype = vectors.encoding.BIT_PATTERN_TYPES[attributes["output_dtype"]]
        attributes["output_dtype"] = helper.np_dtype_to_tensor_dtype(dtype)
    return attributes


def test_stored_onnx_vectors_match_live_onnxruntime_and_reference_evaluator(written, manifest):
    pytest.importorskip("onnx", reason="the live cross-check needs the conformance extra (onnx)")
    pytest.importorskip("onnxruntime", reason="the live cross-check needs the conformance extra (onnxruntime)")
    from onnx import helper
    from test_runtimes_onnx import opset_for, run_ort, run_ref

    out, _ = written
    checked = 0
    for entry in manifest["cases"]:
        if not entry["operator"].startswith("onnx."):
            continue
        op = entry["operator"].split(".", 1)[1]
        inputs, expected = vectors.load_case(out, entry)
        typed = [spec["dtype"] for spec in entry["outputs" if op == "QuantizeLinear" else "inputs"]]
        opset = max(opset_for(np.dtype(vectors.encoding.BIT_PATTERN_TYPES.get(t, t))) for t in typed)
        runner = run_ref if entry["runtime"] == "onnx-reference" else run_ort
        # onnxruntime's Python API cannot feed sub-byte or float8 arrays: those become initializers, like the
        # parameters after the first input.
        names = [
            name for i, name in enumerate(inputs) if i or inputs[name].dtype.name in vectors.encoding.BIT_PATTERN_TYPES
        ]
        outputs = [
            (spec["name"], np.dtype(vectors.encoding.BIT_PATTERN_TYPES.get(spec["dtype"], spec["dtype"])))
            for spec in entry["outputs"]
        ]
        actual = runner(
            op,
            list(inputs.items()),
            outputs,
            _onnx_attributes(entry, helper),
            constants=names,
            opset=ONNX_OPSET.get(op, opset),
        )
        for (name, _), value in zip(outputs, actual):
            assert_matches(value, expected[name], name=f"{entry['id']} {name}")
        checked += 1
    assert checked > 70


def test_stored_torch_vectors_match_live_torch(written, manifest):
    torch = pytest.importorskip("torch", reason="the live cross-check needs the conformance extra (torch==2.13.0)")
    import warnings

    dtypes = {"quint8": torch.quint8, "qint8": torch.qint8, "qint32": torch.qint32}
    out, _ = written
    checked = 0
    for entry in manifest["cases"]:
        if entry["runtime"] != "torch":
            continue
        inputs, expected = vectors.load_case(out, entry)
        a, t = entry["attributes"], {name: torch.from_numpy(np.array(value)) for name, value in inputs.items()}
        op = entry["operator"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if op == "torch.quantize_per_tensor":
                actual = {
                    "y": torch.quantize_per_tensor(
                        t["x"], float(inputs["scale"]), int(inputs["zero_point"]), dtypes[a["dtype"]]
                    ).int_repr()
                }
            elif op == "torch.quantize_per_channel":
                actual = {
                    "y": torch.quantize_per_channel(
                        t["x"], t["scales"].double(), t["zero_points"], a["axis"], dtypes[a["dtype"]]
                    ).int_repr()
                }
            elif op == "torch.fake_quantize_per_tensor_affine":
                actual = {
                    "y": torch.fake_quantize_per_tensor_affine(
                        t["x"], float(inputs["scale"]), int(inputs["zero_point"]), a["quant_min"], a["quant_max"]
                    )
                }
            elif op == "torch.fake_quantize_per_channel_affine":
                actual = {
                    "y": torch.fake_quantize_per_channel_affine(
                        t["x"], t["scale"], t["zero_point"].int(), a["axis"], a["quant_min"], a["quant_max"]
                    )
                }
            else:
                observer = torch.ao.quantization.MinMaxObserver(
                    dtype=dtypes[a["dtype"]], qscheme=getattr(torch, a["qscheme"]), reduce_range=a["reduce_range"]
                )
                observer(t["x"])
                scale, zero_point = observer.calculate_qparams()
                actual = {"scale": scale.reshape(()).float(), "zero_point": zero_point.reshape(())}
        for name, value in expected.items():
            assert_matches(actual[name].numpy(), value, name=f"{entry['id']} {name}")
        checked += 1
    assert checked > 15


def test_cli_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    from quantref.export import onnx as export_onnx

    def refuse(*args, **kwargs):
        raise ValueError("OUT_DIR is not empty;\n  use --force")

    monkeypatch.setattr(export_onnx, "export_onnx", refuse)
    assert cli.main(["export", "onnx", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "quantref export: OUT_DIR is not empty; use --force\n"

    assert cli.main(["chapter", "99"]) == 2
    assert capsys.readouterr().err.startswith("quantref chapter: N must be one of")

    def no_checkout():
        raise FileNotFoundError("no chapters/ and mkdocs.yml here")

    monkeypatch.setattr(cli, "project_root", no_checkout)
    for argv in (["chapter", "1"], ["tour"]):
        assert cli.main(argv) == 2
        assert capsys.readouterr().err == f"quantref {argv[0]}: no chapters/ and mkdocs.yml here\n"


def test_cli_max_report_must_be_non_negative(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["check", str(tmp_path), str(tmp_path), "--max-report", "-1"])
    assert exit_info.value.code == 2
    assert "expected an integer >= 0" in capsys.readouterr().err


def test_cli_description_is_plain_text():
    description = cli.build_parser().description
    assert "``" not in description and description.startswith("The quantref command")


def test_an_unreadable_results_file_fails_its_case_only(written, tmp_path, capsys):
    out, results = written
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    truncated, not_a_zip = "onnx.QuantizeLinear.uint8.ties", "onnx.DequantizeLinear.float8_e4m3fn"
    path = copy / f"{truncated}.npz"
    path.write_bytes(path.read_bytes()[:100])
    (copy / f"{not_a_zip}.npz").write_text("not an npz")
    assert cli.main(["check", str(out), str(copy)]) == 1
    text = capsys.readouterr().out
    for case_id in (truncated, not_a_zip):
        assert f"FAIL     {case_id}: cannot read {copy / (case_id + '.npz')}" in text
    report = vectors.check(out, copy)
    assert report.count("fail") == 2 and report.count("pass") == len(report.cases) - 2


def test_force_replaces_only_what_vectors_wrote(tmp_path):
    out = tmp_path / "vectors"
    cases = vectors.build_cases()[:5]
    vectors.write_vectors(out, cases=cases)  # an "older version" with two more cases
    (out / "cases" / "mine.npz").write_bytes(b"the user's, though it looks like a case")
    (out / "cases" / "notes.txt").write_text("the user's")
    (out / "README").write_text("the user's too")
    vectors.write_vectors(out, force=True, cases=cases[:3])
    expected = sorted([f"{c.id}.npz" for c in cases[:3]] + ["mine.npz", "notes.txt"])
    assert sorted(p.name for p in (out / "cases").iterdir()) == expected
    assert (out / "README").read_text() == "the user's too"
    assert (out / "cases" / "mine.npz").read_bytes() == b"the user's, though it looks like a case"
    assert [entry["id"] for entry in vectors.load_manifest(out)["cases"]] == [c.id for c in cases[:3]]
    assert not list(tmp_path.glob(".quantref-*")), "no staging directory left behind"


def test_stored_mx_vectors_match_torchao(written, manifest):
    """The MX and NVFP4 expectations against torchao's reference casts (CPU); MXINT8, which torchao does not
    implement, is checked against the specification in tests/test_microscaling.py."""
    torch = pytest.importorskip("torch", reason="the torchao cross-check needs torch (conformance extra)")
    pytest.importorskip("torchao", reason="the MX cross-check needs torchao (bench extra)")
    import warnings

    import ml_dtypes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.mx_formats import constants, kernels, mx_tensor, nvfp4_tensor
    elements = {
        "mxfp8_e4m3": (torch.float8_e4m3fn, ml_dtypes.float8_e4m3fn),
        "mxfp8_e5m2": (torch.float8_e5m2, ml_dtypes.float8_e5m2),
        "mxfp6_e2m3": (constants.DTYPE_FP6_E2M3, ml_dtypes.float6_e2m3fn),
        "mxfp6_e3m2": (constants.DTYPE_FP6_E3M2, ml_dtypes.float6_e3m2fn),
        "mxfp4_e2m1": (torch.float4_e2m1fn_x2, ml_dtypes.float4_e2m1fn),
    }

    def values(torch_elements, name):
        raw = torch_elements.view(torch.uint8)
        if name.startswith("mxfp8"):
            return torch_elements.float().numpy()
        if name in ("mxfp4_e2m1", "nvfp4"):
            return kernels.f4_unpacked_to_f32(kernels.unpack_uint4(raw)).numpy()
        decode = kernels.f6_e2m3_unpacked_to_f32 if name == "mxfp6_e2m3" else kernels.f6_e3m2_unpacked_to_f32
        return decode(raw).numpy()

    out, _ = written
    checked = 0
    for entry in manifest["cases"]:
        if entry["runtime"] != "torchao-mx" or entry["attributes"].get("format") == "mxint8":
            continue
        inputs, expected = vectors.load_case(out, entry)
        a = entry["attributes"]
        x = inputs["x"] if a["axis"] == -1 else np.ascontiguousarray(inputs["x"].T)
        full = x.shape[-1] // a["block_size"] * a["block_size"]  # torchao takes whole blocks only
        x = torch.from_numpy(np.ascontiguousarray(x[:, :full]))
        if entry["operator"] == "mx.quantize":
            torch_type, numpy_type = elements[a["format"]]
            scales, data = mx_tensor.to_mx(x, torch_type, a["block_size"])
            name, scale_name = a["format"], "scales"
        else:
            per_tensor = inputs.get("per_tensor_scale")
            per_tensor = None if per_tensor is None else torch.from_numpy(np.array(per_tensor))
            scales, data = nvfp4_tensor.nvfp4_quantize(x, 16, per_tensor)
            name, scale_name, numpy_type = "nvfp4", "block_scales", ml_dtypes.float4_e2m1fn
        stored_scales, stored_elements = expected[scale_name], expected["elements"]
        if a["axis"] != -1:
            stored_scales, stored_elements = stored_scales.T, stored_elements.T
        blocks = full // a["block_size"]
        np.testing.assert_array_equal(stored_scales[:, :blocks], scales.view(torch.uint8).numpy().reshape(-1, blocks))
        stored_values = stored_elements[:, :full].view(numpy_type).astype(np.float32)
        np.testing.assert_array_equal(
            stored_values, values(data, name).reshape(stored_values.shape), err_msg=entry["id"]
        )
        checked += 1
    assert checked == 8
