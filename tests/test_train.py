"""Tests for quantref.train and quantref.cache: determinism, serialization, the on-disk cache."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from quantref import cache, data, models, train

SHORT = train.TrainConfig(epochs=1)


@pytest.fixture(scope="module")
def splits() -> data.Splits:
    return data.load_splits()


@pytest.fixture
def cache_in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("QUANTREF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _short_model(splits: data.Splits, seed: int = 0) -> models.DigitsCNN:
    return train.train(splits.x_train[:256], splits.y_train[:256], seed=seed, config=SHORT, progress=False)


def test_training_is_bitwise_deterministic(splits):
    first = train.model_to_arrays(_short_model(splits))
    second = train.model_to_arrays(_short_model(splits))
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    initial = train.model_to_arrays(models.DigitsCNN(rngs=nnx.Rngs(0)))
    assert not np.array_equal(first["conv1/kernel"], initial["conv1/kernel"])
    assert not np.array_equal(first["bn1/mean"], initial["bn1/mean"])


def test_different_seeds_train_different_models(splits):
    seed0 = train.model_to_arrays(_short_model(splits, seed=0))
    seed1 = train.model_to_arrays(_short_model(splits, seed=1))
    assert not np.array_equal(seed0["dense/kernel"], seed1["dense/kernel"])


def test_state_keys_name_layers():
    arrays = train.model_to_arrays(models.DigitsCNN(rngs=nnx.Rngs(0)))
    assert set(arrays) == {
        "conv1/kernel", "conv1/bias", "bn1/scale", "bn1/bias", "bn1/mean", "bn1/var",
        "conv2/kernel", "conv2/bias", "bn2/scale", "bn2/bias", "bn2/mean", "bn2/var",
        "dense/kernel", "dense/bias",
    }  # fmt: skip


def test_cache_round_trip_gives_identical_logits(splits, cache_in_tmp):
    model = _short_model(splits)
    path = cache.save_arrays("round-trip", train.model_to_arrays(model))
    assert path.parent == cache_in_tmp and path.is_file()
    loaded = train.model_from_arrays(cache.load_arrays("round-trip"))
    np.testing.assert_array_equal(loaded(splits.x_test), model(splits.x_test))
    assert [p.name for p in cache_in_tmp.iterdir()] == ["round-trip.quantref.npz"]


def test_model_from_arrays_rejects_mismatched_state():
    arrays = train.model_to_arrays(models.DigitsCNN(rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="keys"):
        train.model_from_arrays({k: v for k, v in arrays.items() if k != "bn1/mean"})
    with pytest.raises(ValueError, match="conv1/kernel"):
        train.model_from_arrays({**arrays, "conv1/kernel": np.zeros((3, 3, 1, 8), np.float32)})


def test_load_or_train_trains_once_then_loads(cache_in_tmp, monkeypatch):
    trained = train.load_or_train(seed=0, config=SHORT, progress=False)
    assert (cache_in_tmp / (train.cache_name(0, SHORT) + ".quantref.npz")).is_file()

    def fail(*args, **kwargs):
        raise AssertionError("load_or_train retrained although the cache holds the model")

    monkeypatch.setattr(train, "train", fail)
    loaded = train.load_or_train(seed=0, config=SHORT, progress=False)
    x = data.load_splits().x_test[:32]
    np.testing.assert_array_equal(loaded(x), trained(x))


def test_cache_name_depends_on_seed_and_config():
    names = {
        train.cache_name(0, SHORT),
        train.cache_name(1, SHORT),
        train.cache_name(0, dataclasses.replace(SHORT, learning_rate=1e-3)),
    }
    assert len(names) == 3
    assert train.cache_name(0, SHORT) == train.cache_name(0, train.TrainConfig(epochs=1))
    assert train.cache_name(7, SHORT).startswith("digits_cnn-seed7-")


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("QUANTREF_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "quantref"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "quantref"
    monkeypatch.setenv("QUANTREF_CACHE", str(tmp_path / "explicit"))
    assert cache.cache_dir() == tmp_path / "explicit"


def test_clear_cache_removes_entries_and_temporaries_only(cache_in_tmp):
    assert cache.clear_cache() == []
    entry = cache.save_arrays("entry", {"a": np.arange(3)})
    leftover = cache_in_tmp / ".entry.abc123.quantref.tmp"
    leftover.write_bytes(b"half a file")
    unrelated = cache_in_tmp / "notes.txt"
    unrelated.write_text("not ours")
    users_array = cache_in_tmp / "mine.npz"  # an .npz quantref did not write, in a directory the user chose
    np.savez(users_array, a=np.arange(2))
    assert cache.clear_cache() == sorted([entry, leftover])
    assert sorted(p.name for p in cache_in_tmp.iterdir()) == ["mine.npz", "notes.txt"]
    assert cache.load_arrays("entry") is None


def test_entry_names_must_be_plain(cache_in_tmp):
    for bad in ("", "../escape", "sub/dir", ".hidden"):
        with pytest.raises(ValueError):
            cache.entry_path(bad)


@pytest.mark.slow
def test_load_or_train_reaches_97_percent_test_accuracy(cache_in_tmp, splits):
    model = train.load_or_train(progress=False)
    assert models.accuracy(model, splits.x_test, splits.y_test) >= 0.97
    assert all(np.isfinite(array).all() for array in train.model_to_arrays(model).values())
