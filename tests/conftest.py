"""Fixtures shared by the tests of the quantized walkthrough model (nn, ptq, integer, export): the data splits, the
trained model, the model with BatchNorm folded, and its W8A8 quantization, each built once per test module."""

import pytest

from quantref import data, nn, ptq, train


@pytest.fixture(scope="module")
def splits():
    return data.load_splits()


@pytest.fixture(scope="module")
def model():
    return train.load_or_train(progress=False)


@pytest.fixture(scope="module")
def folded(model, splits):
    return nn.fold_batch_norm(model, splits.x_calib[:1])


@pytest.fixture(scope="module")
def qmodel(folded, splits):
    return ptq.quantize_model(folded, splits.x_calib)
