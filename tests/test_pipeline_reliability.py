"""Bad input to the model pipeline (models, nn, ptq, integer, export) gets a clear error naming the parameter, an
empty batch gives an empty result, a corrupt cache entry is rebuilt, and `quantref export onnx --force` killed at any
point leaves the complete old set of files or the complete new one."""

import signal
import textwrap
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from _kill import run_and_kill  # tests/_kill.py
from flax import nnx

from quantref import cache, integer, models, nn, ptq, train

EMPTY = np.zeros((0, 8, 8, 1), np.float32)


@pytest.mark.parametrize(
    "x, error, match",
    [
        (np.zeros((2, 8, 8), np.float32), ValueError, r"x must be .*of shape \(N, 8, 8, 1\)"),
        (np.zeros((2, 4, 4, 1), np.float32), ValueError, r"x must be .*of shape \(N, 8, 8, 1\)"),
        (np.zeros((2, 8, 8, 1), np.int64), TypeError, "x must be a float array"),
        (np.zeros((2, 8, 8, 1), complex), TypeError, "x must be a float array"),
        ("images", TypeError, "x must be a float array"),
        (None, TypeError, "x must be a float array"),
    ],
)
def test_bad_images_are_named_everywhere(model, folded, qmodel, x, error, match):
    calls = [
        lambda: model(x),
        lambda: models.accuracy(model, x, np.zeros(2, int)),
        lambda: nn.capture(folded, x),
        lambda: ptq.fake_quant_forward(folded, qmodel, x),
        lambda: integer.integer_forward(qmodel, integer.multipliers(qmodel), x),
    ]
    for call in calls:
        with pytest.raises(error, match=match):
            call()


def test_empty_batches_give_empty_results(model, folded, qmodel):
    assert model(jnp.asarray(EMPTY)).shape == (0, 10)
    logits, activations = ptq.fake_quant_forward(folded, qmodel, EMPTY)
    assert logits.shape == (0, 10) and activations["dense.input"].shape == (0, 512)
    out = integer.integer_forward(qmodel, integer.multipliers(qmodel), EMPTY)
    assert out.output.shape == (0, 10) and out.output_q.dtype == np.uint8 and out.scale.shape == ()
    with pytest.raises(ValueError, match="at least one image"):
        models.accuracy(model, EMPTY, np.zeros(0, int))
    with pytest.raises(ValueError, match="calibration_x must be a non-empty"):
        ptq.quantize_model(folded, EMPTY)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"per_channel": "yes"}, TypeError, "per_channel must be True or False"),
        ({"activation_signed": 1}, TypeError, "activation_signed must be True or False"),
        ({"activation_ranges": [(0, 1)]}, TypeError, "activation_ranges must be a dict"),
        ({"activation_ranges": {"conv1.input": (0.0, 1.0)}}, ValueError, "activation_ranges lacks"),
        ({"skip": 7}, TypeError, "skip must be a path pattern"),
    ],
)
def test_bad_quantize_model_arguments(folded, splits, qmodel, kwargs, error, match):
    with pytest.raises(error, match=match):
        ptq.quantize_model(folded, splits.x_calib, **kwargs)


def test_bad_ranges_name_the_entry(folded, splits, qmodel):
    ranges = {name: (0.0, "top") for name in qmodel.activations}
    with pytest.raises(ValueError, match=r"activation_ranges\['conv1.input'\]"):
        ptq.quantize_model(folded, splits.x_calib, activation_ranges=ranges)


def test_wrong_objects_are_named(folded, splits, qmodel):
    with pytest.raises(TypeError, match="model must be a flax.nnx.Module"):
        ptq.quantize_model("model", splits.x_calib)
    with pytest.raises(TypeError, match="model must be a flax.nnx.Module"):
        nn.fold_batch_norm(None, splits.x_calib[:1])
    with pytest.raises(TypeError, match="qmodel must be a QuantizedModel"):
        ptq.fake_quant_model(folded, {"conv1": None})
    with pytest.raises(ValueError, match="calibration_x does not fit the model"):
        ptq.quantize_model(folded, np.zeros((4, 8, 8), np.float32))
    with pytest.raises(ValueError, match="labels must be 2 integer labels"):
        ptq.accuracy(np.zeros((2, 10)), np.zeros(3, int))


def test_a_model_of_another_shape_gets_an_error_naming_x():
    mlp = nnx.Linear(64, 10, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"x of shape \(2, 8, 8, 1\) cannot go through Linear"):
        nn.capture(mlp, np.zeros((2, 8, 8, 1), np.float32))


def test_a_corrupt_cache_entry_is_reported_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTREF_CACHE", str(tmp_path))
    first = train.load_or_train(progress=False)
    (entry,) = tmp_path.glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    with pytest.raises(zipfile.BadZipFile):
        np.load(entry)
    with pytest.warns(UserWarning, match=f"{entry.name} is unusable.*rebuilt"):
        again = train.load_or_train(progress=False)
    np.testing.assert_array_equal(again.conv1.kernel[...], first.conv1.kernel[...])  # deterministic retraining
    assert cache.load_arrays(entry.name.removesuffix(".quantref.npz")) is not None


# --- export onnx --force killed at several points ------------------------------------------------------------------

_DRIVER = textwrap.dedent(
    """
    import sys, time
    import quantref._files as quantref_files
    from quantref import cli

    write_files = quantref_files.write_files

    def slow_write_files(target, writers):
        def wrap(name, writer):
            def run(path):
                writer(path)
                print("wrote " + name, flush=True)
                time.sleep(0.3)  # a window for the parent to kill in
            return run
        return write_files(target, {name: wrap(name, writer) for name, writer in writers.items()})

    quantref_files.write_files = slow_write_files
    sys.exit(cli.main(["export", "onnx", sys.argv[1], "--force", "--observer", sys.argv[2]]))
    """
)
FILES = ("model.onnx", "float.onnx", "test_inputs.npz", "expected.npz")


def _run_export(out: Path, observer: str, kill_after: str | None) -> int:
    process, _ = run_and_kill(_DRIVER, [str(out), observer], None if kill_after is None else f"wrote {kill_after}")
    return process.returncode


@pytest.fixture(scope="module")
def export_sets(tmp_path_factory):
    """The complete old (min-max) and new (percentile) file sets, written by uninterrupted runs."""
    root = tmp_path_factory.mktemp("export_sets")
    sets = {}
    for label, observer in (("old", "min_max"), ("new", "percentile")):
        assert _run_export(root / label, observer, None) == 0
        sets[label] = {name: (root / label / name).read_bytes() for name in FILES}
    assert sets["old"]["expected.npz"] != sets["new"]["expected.npz"]
    return root, sets


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", ["model.onnx", "test_inputs.npz", "float.onnx", None])
def test_export_force_killed_leaves_the_old_or_the_new_set(tmp_path, export_sets, kill_after):
    root, sets = export_sets
    out = tmp_path / "export"
    out.mkdir()
    for name, content in sets["old"].items():
        (out / name).write_bytes(content)
    (out / "notes.txt").write_text("the user's")
    code = _run_export(out, "percentile", kill_after)
    assert code == (0 if kill_after is None else -signal.SIGKILL)
    files = {name: (out / name).read_bytes() for name in FILES}
    state = [label for label, expected in sets.items() if files == expected]
    assert state == (["new"] if kill_after is None else ["old"])
    assert (out / "notes.txt").read_text() == "the user's"
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, "notes.txt"])


@pytest.mark.slow
def test_cli_compress_writes_a_file_that_reads_back(tmp_path, capsys):
    from quantref import cli, compression

    out = tmp_path / "compressed"
    assert cli.main(["compress", str(out)]) == 0
    model = compression.read_compressed(out / "model.qrc")
    assert isinstance(model, compression.CompressedModel)
    assert cli.main(["compress", str(out)]) == 2  # not empty, no --force
    assert "not empty" in capsys.readouterr().err
