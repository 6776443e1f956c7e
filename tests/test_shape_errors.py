"""Shape errors name the layer (torch's module name, through nesting) and the model's input shape."""

import numpy as np
import pytest

import striate as st
from striate import layers as L


def test_top_level_error_names_the_layer_index_and_type():
    model = st.zoo.lenet5()
    with pytest.raises(ValueError, match=r"^layer 7 \(Linear\): Linear: input has shape \(2, 256\), expected \(N, 400\)$"):
        model(np.zeros((2, 1, 28, 28), np.float32))


def test_error_names_the_input_shape_the_model_takes():
    model = st.zoo.lenet5()
    model.input_shape = (1, 32, 32)
    with pytest.raises(ValueError, match=r"takes input of shape \(N, 1, 32, 32\), got \(2, 1, 28, 28\)"):
        model(np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(ValueError, match=r"^layer 7 \(Linear\)"):
        model.predict(np.zeros((2, 1, 28, 28), np.float32))


def test_nested_errors_carry_the_torch_module_name():
    st.seed(0)
    body = st.Sequential([L.Conv2d(3, 3, 3, padding=1), L.Conv2d(4, 4, 1)])
    model = st.Sequential([L.ReLU(), L.Residual(body), st.Sequential([L.Flatten()])])
    with pytest.raises(ValueError, match=r"^layer 1\.body\.1 \(Conv2d\): Conv2d: input has 3 channels, expected in_channels=4$"):
        model(np.zeros((1, 3, 4, 4), np.float32))
    short = st.Sequential([L.Residual(L.ReLU(), shortcut=L.Conv2d(2, 3, 1))])
    with pytest.raises(ValueError, match=r"^layer 0\.shortcut \(Conv2d\): Conv2d: input has 3 channels"):
        short(np.zeros((1, 3, 4, 4), np.float32))


def test_subclasses_of_value_error_pass_unchanged():
    model = st.Sequential([L.ReLU()])
    with pytest.raises(TypeError):
        model(np.zeros((1, 1, 2, 2), np.int32))
