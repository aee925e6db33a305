"""Fixtures shared by the tests of the quantized walkthrough model (ptq, integer): the data splits, the float model
with batch norm folded, and its W8A8 quantization, each built once per test module."""

import pytest

from quantref import correction, data, ptq, train


@pytest.fixture(scope="module")
def splits():
    return data.load_splits()


@pytest.fixture(scope="module")
def params():
    return correction.fold_batch_norm(train.load_or_train(progress=False))


@pytest.fixture(scope="module")
def qmodel(params, splits):
    return ptq.quantize_model(params, splits.x_calib)
