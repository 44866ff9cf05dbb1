"""Shared fixtures: quiet TensorFlow, seeded randomisation of weights and BN statistics."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from kopt.testing import assert_same_function, randomize_weights  # noqa: F401


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
