"""Tests for quantref.data: split sizes, disjointness, reproducibility, stratification, batching."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from quantref import data


@pytest.fixture(scope="module")
def splits() -> data.Splits:
    return data.load_splits()


def test_split_sizes_shapes_and_dtypes(splits):
    assert splits.x_train.shape == (1297, 8, 8, 1)
    assert splits.x_calib.shape == (200, 8, 8, 1)
    assert splits.x_test.shape == (300, 8, 8, 1)
    assert splits.y_train.shape == (1297,)
    assert splits.y_calib.shape == (200,)
    assert splits.y_test.shape == (300,)
    for x in (splits.x_train, splits.x_calib, splits.x_test):
        assert x.dtype == np.float32
        assert x.min() >= 0.0 and x.max() <= 1.0
    for y in (splits.y_train, splits.y_calib, splits.y_test):
        assert y.dtype == np.int32


def test_splits_are_disjoint_and_cover_the_dataset(splits):
    # Some digits images are exact duplicates of each other, so match rows by content with multiplicity.
    all_rows = data.preprocess(load_digits().images).reshape(-1, 64)
    split_rows = np.concatenate([x.reshape(-1, 64) for x in (splits.x_train, splits.x_calib, splits.x_test)])
    all_sorted = np.unique(all_rows, axis=0, return_counts=True)
    split_sorted = np.unique(split_rows, axis=0, return_counts=True)
    np.testing.assert_array_equal(all_sorted[0], split_sorted[0])
    np.testing.assert_array_equal(all_sorted[1], split_sorted[1])


def test_preprocess_divides_by_sixteen_and_adds_channel_axis():
    pixels = np.arange(64).reshape(1, 8, 8) % 17
    x = data.preprocess(pixels)
    assert x.shape == (1, 8, 8, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0, :, :, 0], (pixels[0] / 16).astype(np.float32))


def test_same_seed_same_splits_other_seed_other_splits(splits):
    again = data.load_splits(seed=0)
    other = data.load_splits(seed=1)
    np.testing.assert_array_equal(splits.x_test, again.x_test)
    np.testing.assert_array_equal(splits.y_train, again.y_train)
    assert not np.array_equal(splits.x_test, other.x_test)


def test_splits_are_stratified(splits):
    for y, size in ((splits.y_train, 1297), (splits.y_calib, 200), (splits.y_test, 300)):
        counts = np.bincount(y, minlength=data.NUM_CLASSES)
        assert counts.max() - counts.min() <= max(2, size // 100), counts


def test_batches_are_full_shuffled_and_reproducible():
    x = np.arange(10, dtype=np.float32)
    y = np.arange(10, dtype=np.int32)
    first = list(data.batches(x, y, 3, seed=(0, 0)))
    again = list(data.batches(x, y, 3, seed=(0, 0)))
    assert len(first) == 3
    assert all(x_batch.shape == (3,) for x_batch, _ in first)
    for (x_batch, y_batch), (x_again, _) in zip(first, again):
        np.testing.assert_array_equal(x_batch, y_batch)
        np.testing.assert_array_equal(x_batch, x_again)
    seen = np.concatenate([x_batch for x_batch, _ in first])
    assert len(np.unique(seen)) == 9
    assert not np.array_equal(seen, np.arange(9))
