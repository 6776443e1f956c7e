"""docs/guarantees.md as tests: the items no other test file covers, and an index of those it does.

Each test here names its item in its docstring ("Guarantee 14: ..."). Items
already tested elsewhere are not tested twice: ``INDEX`` below maps every item
to those tests (file::name), and ``test_index_points_at_existing_tests`` keeps
that map honest by checking that each named test still exists.

Here: size overflow in the C++ entry points (6), worker exceptions under
OpenMP in a fresh process (7), GIL release during a long convolution (8), a
pickle payload offered to every loader (10), non-finite values with Adam (13),
SIGKILL during saves (14), resume across processes and thread counts with
striate.augment, Adam and BatchNorm (15), whole-``fit`` determinism across
``STRIATE_NUM_THREADS`` in subprocesses (16), and the sanitizer tooling.

Not here: fuzzing of the loaders (test_fuzz.py); the per-module behaviour
that the indexed tests check.
"""

from __future__ import annotations

import ast
import builtins
import gzip
import hashlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import striate as st
import striate.functional as F
from striate import _core, io, layers as L, optim
from striate.model import Sequential
from striate.training import Callback, NonFiniteError, fit

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
PYTHON_DIR = str(Path(st.__file__).resolve().parent.parent)
I64_MAX = 2**63 - 1

# ----------------------------------------------------------------------------- the index

INDEX = {
    "1 float64 gradient check": [
        "test_reference.py::test_conv2d_gradcheck", "test_reference.py::test_max_pool2d_gradcheck",
        "test_reference.py::test_avg_pool2d_gradcheck", "test_reference.py::test_lp_pool2d_gradcheck",
        "test_reference.py::test_adaptive_avg_pool2d_gradcheck", "test_reference.py::test_linear_gradcheck",
        "test_reference.py::test_gradcheck_catches_a_wrong_gradient", "test_layers.py::test_gradcheck_float64",
        "test_layers.py::test_gradcheck_dropout_fixed_mask", "test_losses.py::test_gradcheck_float64",
        "test_model.py::test_whole_model_gradcheck_float64", "test_gradcheck.py::test_conv_net_passes",
    ],
    "2 float32 kernels against the float64 reference": [
        "test_functional.py::test_conv2d_matches_reference", "test_functional.py::test_max_pool2d_matches_reference",
        "test_functional.py::test_avg_pool2d_matches_reference", "test_functional.py::test_lp_pool2d_matches_reference",
        "test_functional.py::test_adaptive_avg_pool2d_matches_reference",
        "test_functional.py::test_linear_matches_reference", "test_core_conv.py::test_matches_oracle",
        "test_core_pool.py::test_max_pool_matches_oracle", "test_gemm.py::test_matches_float64_reference",
        "test_layers.py::test_float32_matches_float64", "test_reference.py::test_float32_close_to_float64",
    ],
    "3 edge cases": [
        "test_functional.py::test_zero_dy_gives_exactly_zero_grads",
        "test_functional.py::test_backward_twice_is_bitwise_equal",
        "test_functional.py::test_empty_batch_shapes_and_zero_grads",
        "test_functional.py::test_max_pool2d_ties_go_to_first_index", "test_functional.py::test_nan_propagates",
        "test_layers.py::test_backward_edge_cases", "test_layers.py::test_empty_batch",
        "test_core_pool.py::test_max_pool_ties_take_first_index", "test_core_pool.py::test_max_pool_nan_propagates",
    ],
    "4 layouts": [
        "test_functional.py::test_layouts_give_identical_results_and_fresh_outputs",
        "test_functional.py::test_readonly_and_broadcast_inputs", "test_core_conv.py::test_outputs_are_fresh_arrays",
        "test_layers.py::test_non_contiguous_inputs_give_the_same_results", "test_losses.py::test_layout_independent",
    ],
    "5 invalid arguments": [
        "test_functional.py::test_bad_input_raises_clear_error",
        "test_functional.py::test_hypothesis_arguments_raise_only_clean_errors",
        "test_core_conv.py::test_kernel_larger_than_padded_input", "test_core_conv.py::test_channel_mismatch",
        "test_core_conv.py::test_wrong_dy_shape", "test_core_conv.py::test_float64_and_int_inputs_are_rejected",
        "test_core_pool.py::test_window_argument_errors_name_the_argument",
        "test_core_pool.py::test_wrong_float_dtype_or_layout_is_type_error",
        "test_layers.py::test_input_validation", "test_augment.py::test_bad_calls",
    ],
    "6 size arithmetic": [
        "test_functional.py::test_bad_input_raises_clear_error",  # the "... overflow" cases
        "test_reliability.py::test_core_size_overflow_is_a_value_error_before_allocation",
        "test_reliability.py::test_functional_size_overflow_is_a_value_error",
        "test_reliability.py::test_ceil_mode_with_a_huge_stride_keeps_the_output_size",
    ],
    "7 OpenMP worker exceptions": [
        "test_core_pool.py::test_max_pool_backward_rejects_bad_indices",
        "test_reliability.py::test_worker_exceptions_are_rethrown_after_the_region",
    ],
    "8 GIL": [
        "test_functional.py::test_cpp_eight_python_threads_match_serial",
        "test_core_pool.py::test_kernels_release_the_gil_and_agree_across_python_threads",
        "test_augment.py::test_kernels_release_the_gil_and_are_thread_safe",
        "test_reliability.py::test_another_thread_runs_during_a_long_convolution",
        "test_reliability.py::test_no_python_api_while_the_gil_is_released",
    ],
    "9 safetensors weights": [
        "test_io.py::test_model_round_trip", "test_io.py::test_truncated", "test_io.py::test_empty_file",
        "test_io.py::test_header_bit_flips_are_caught", "test_io.py::test_data_bit_flips_name_the_tensor",
        "test_io.py::test_wrong_tensors", "test_io.py::test_non_finite_values", "test_io.py::test_bad_headers",
        "test_io.py::test_bad_architecture", "test_io.py::test_load_weights_and_failed_load_leaves_model_unchanged",
        "test_model.py::test_load_state_dict_all_or_nothing", "test_fuzz.py::test_fuzz_weights_file",
    ],
    "10 no pickle": [
        "test_io.py::test_pickle_payload_is_never_run", "test_cifar.py::test_pickle_payload_refused_without_running",
        "test_reliability.py::test_pickle_payload_is_refused_by_every_loader",
    ],
    "11 MNIST IDX": [
        "test_mnist.py::test_bad_magic", "test_mnist.py::test_truncated_payload", "test_mnist.py::test_trailing_data",
        "test_mnist.py::test_count_mismatch", "test_mnist.py::test_label_out_of_range",
        "test_mnist.py::test_loads_raw_and_gz_both_spellings", "test_fuzz.py::test_fuzz_idx",
    ],
    "12 CIFAR-10": [
        "test_cifar.py::test_binary_size_not_multiple", "test_cifar.py::test_pickle_validation",
        "test_cifar.py::test_download_checksum_mismatch", "test_cifar.py::test_hostile_archive_refused",
        "test_mnist.py::test_download_checksum_mismatch_leaves_nothing", "test_fuzz.py::test_fuzz_cifar_binary",
        "test_fuzz.py::test_fuzz_cifar_pickle",
    ],
    "13 non-finite values": [
        "test_training.py::test_nonfinite_loss_stops_before_the_step",
        "test_training.py::test_nonfinite_gradient_stops_before_the_step",
        "test_reliability.py::test_divergence_stops_fit_with_parameters_and_adam_state_intact",
    ],
    "14 atomic checkpoints": [
        "test_io.py::test_failed_write_keeps_old_file", "test_io.py::test_killed_save_keeps_old_file",
        "test_training.py::test_a_failed_checkpoint_write_leaves_the_previous_one",
        "test_reliability.py::test_sigkill_during_saves_leaves_a_loadable_file",
        "test_reliability.py::test_successful_saves_leave_no_temp_files",
        "test_reliability.py::test_save_order_is_write_fsync_replace_fsync_folder",
    ],
    "15 bit-exact resume": [
        "test_training.py::test_resume_in_a_fresh_process_is_bit_exact",
        "test_optim.py::test_state_dict_resume_is_exact",
        "test_reliability.py::test_resume_in_fresh_processes_on_other_thread_counts",
        "test_reliability.py::test_checkpoint_round_trip_keeps_zero_dim_buffers",
    ],
    "16 determinism across thread counts": [
        "test_functional.py::test_cpp_thread_counts_are_bitwise_identical",
        "test_core_conv.py::test_bitwise_identical_across_thread_counts",
        "test_core_pool.py::test_bitwise_identical_for_any_thread_count",
        "test_gemm.py::test_bit_identical_for_any_thread_count", "test_augment.py::test_bit_identical_across_thread_counts",
        "test_model.py::test_bitwise_equal_across_thread_counts",
        "test_training.py::test_trained_weights_are_identical_for_every_thread_count",
        "test_reliability.py::test_whole_fit_is_identical_for_every_STRIATE_NUM_THREADS",
    ],
    "17 argument validation": [
        "test_layers.py::test_dropout_rejects_bad_p", "test_layers.py::test_dropout_rejects_non_numbers",
        "test_optim.py::test_bad_lr_rejected", "test_optim.py::test_argument_validation",
        "test_optim.py::test_schedule_state_and_validation", "test_training.py::test_fit_rejects_bad_arguments",
        "test_training.py::test_learning_rate_scheduler_rejects_bad_rates", "test_layers.py::test_constructor_validation",
    ],
    "18 fork safety": [
        "test_process_safety.py::test_fork_after_kernels_ran_child_computes_like_the_parent",
        "test_process_safety.py::test_fork_before_any_kernel_keeps_threads_in_the_child",
        "test_process_safety.py::test_multiprocessing_pool_computes_like_the_parent",
    ],
    "19 thread limits": [
        "test_process_safety.py::test_set_num_threads_beyond_the_limit_names_it",
        "test_process_safety.py::test_thread_count_from_the_environment_names_the_variable_and_limit",
        "test_process_safety.py::test_thread_creation_failure_is_an_exception_not_an_exit",
        "test_core_hostile.py::test_core_set_num_threads_names_the_limit",
    ],
    "20 byte counts and alignment": [
        "test_core_hostile.py::test_byte_count_overflow_is_a_value_error_naming_the_op",
        "test_core_hostile.py::test_unallocatable_output_is_a_memory_error_naming_the_op_and_bytes",
        "test_core_hostile.py::test_misaligned_buffers_are_refused",
        "test_core_hostile.py::test_workspace_out_of_memory_names_the_op",
        "test_core_hostile.py::test_non_contiguous_and_negative_stride_buffers_are_refused",
        "test_core_hostile.py::test_wrong_dtypes_and_non_arrays_are_type_errors",
        "test_core_hostile.py::test_int_arguments_beyond_int64_are_clean_errors",
    ],
    "21 a stop restores everything": [
        "test_stop_restores.py::test_nan_stop_restores_batchnorm_buffers_and_model_saves",
        "test_fit_options.py::test_clip_grad_norm_still_stops_on_a_non_finite_norm",
    ],
    "22 files that are not files": [
        "test_files_not_files.py::test_save_through_symlink_updates_target_and_keeps_link",
        "test_files_not_files.py::test_save_onto_non_file_raises_and_leaves_it",
        "test_files_not_files.py::test_killed_saves_leave_no_temp_after_next_save",
        "test_files_not_files.py::test_stale_temp_of_a_live_process_is_kept",
        "test_files_not_files.py::test_loaders_refuse_a_fifo_at_once",
        "test_files_not_files.py::test_loaders_refuse_a_directory_and_the_zero_device",
        "test_files_not_files.py::test_read_bounded_reads_what_it_checked",
    ],
    "23 no silent misuse": [
        "test_misuse.py::test_optimizer_over_other_parameters_raises",
        "test_fit_options.py::test_bad_optimizer_raises_before_the_first_step",
        "test_misuse.py::test_bool_given_as_string_raises_type_error",
        "test_misuse.py::test_negative_running_var_refused_safetensors",
        "test_misuse.py::test_negative_running_var_refused_onnx",
        "test_misuse.py::test_masked_arrays_refused",
        "test_misuse.py::test_sequential_from_eight_threads_is_right_or_raises",
    ],
    "24 errors say the truth": [
        "test_misuse.py::test_int_limit_is_named", "test_misuse.py::test_huge_label_is_shown_as_received",
        "test_misuse.py::test_checkpoint_directory_fails_before_first_epoch",
        "test_core_hostile.py::test_workspace_out_of_memory_names_the_op",
        "test_misuse.py::test_onnx_constructor_error_names_file_and_node",
        "test_misuse.py::test_summary_of_an_onnx_file_summarises_it",
    ],
    "Tools: sanitizers": ["test_reliability.py::test_sanitizer_script_and_build_option"],
    "Tools: hypothesis for kernel arguments": [
        "test_functional.py::test_hypothesis_arguments_raise_only_clean_errors",
        "test_functional.py::test_hypothesis_valid_arguments_match_reference",
    ],
    "Tools: fuzzing the loaders": [
        "test_fuzz.py::test_fuzz_idx", "test_fuzz.py::test_fuzz_cifar_binary", "test_fuzz.py::test_fuzz_cifar_pickle",
        "test_fuzz.py::test_fuzz_weights_file", "test_fuzz.py::test_fuzz_onnx_import",
        "test_fuzz_loaders.py::test_fuzz_image_folder", "test_fuzz_loaders.py::test_fuzz_loader_state",
        "test_fuzz_loaders.py::test_fuzz_checkpoint_with_loader_state",
        "test_fuzz_loaders.py::test_fuzz_nested_architecture_json", "test_fuzz_loaders.py::test_fuzz_plain_safetensors",
    ],
}


def _test_names(path):
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test")}


def test_index_points_at_existing_tests():
    """Guarantee 1-20 (and any later item) and Tools: every item has tests, and every test the index names exists."""
    items = [k.split()[0] for k in INDEX if not k.startswith("Tools")]
    assert items == [str(i) for i in range(1, len(items) + 1)] and len(items) >= 20
    names = {}
    for key, tests in INDEX.items():
        assert tests, key
        for ref in tests:
            fname, test = ref.split("::")
            if fname not in names:
                names[fname] = _test_names(TESTS / fname)
            assert test in names[fname], f"item {key}: {ref} does not exist"


# ----------------------------------------------------------------------------- helpers


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = PYTHON_DIR + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run(code, *args, timeout=300, **env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, env=_env(**env), timeout=timeout)


def _state_hash(state):
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(np.ascontiguousarray(state[k]).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- 6: size arithmetic

X1 = np.ones((1, 1, 3, 3), np.float32)
W2 = np.ones((1, 1, 2, 2), np.float32)
DY1 = np.ones((1, 1, 1, 1), np.float32)
IX1 = np.zeros((1, 1, 1, 1), np.int64)

CORE_OVERFLOW = {
    "conv output N*K*OH*OW": lambda: _core.conv2d_forward(X1, W2, None, 1, 1, 2**31, 2**31, 2**31, 2**31, 1, 1, 1),
    "conv backward output": lambda: _core.conv2d_backward(DY1, X1, W2, 1, 1, 2**31, 2**31, 2**31, 2**31, 1, 1, 1,
                                                          True, True, True),
    "max_pool2d_backward H*W": lambda: _core.max_pool2d_backward(DY1, IX1, 2**32, 2**32),
    "avg_pool2d_backward H*W": lambda: _core.avg_pool2d_backward(DY1, 2**32, 2**32, 1, 1, 2**32, 2**32, 0, 0,
                                                                 False, True),
    "adaptive output OH*OW": lambda: _core.adaptive_avg_pool2d_forward(X1, 2**32, 2**32),
    "adaptive_backward H*W": lambda: _core.adaptive_avg_pool2d_backward(DY1, 2**32, 2**32),
}


@pytest.mark.parametrize("case", sorted(CORE_OVERFLOW))
def test_core_size_overflow_is_a_value_error_before_allocation(case):
    """Guarantee 6: a _core call whose element count overflows int64 raises ValueError, allocating nothing.

    The sizes asked for are beyond any address space, so reaching an allocator
    would be a MemoryError (or a wrapped, too-small buffer); the checked
    products must refuse them first.
    """
    with pytest.raises(ValueError, match="overflows int64"):
        CORE_OVERFLOW[case]()


# _core entry points whose padded extent or dilated kernel overflows in the
# geometry arithmetic itself (shape.hpp conv_out_size / pool_out_size). Unchecked,
# that is signed overflow (UB, which the sanitizer run aborts on) and, in a release
# build, a ValueError with a wrapped, negative "padded input" in its message.
CORE_GEOMETRY_OVERFLOW = {
    "conv pad_top + pad_bottom": lambda: _core.conv2d_forward(X1, W2, None, 1, 1, 2**62, 2**62, 0, 0, 1, 1, 1),
    "conv dil_h * (kh - 1) + 1": lambda: _core.conv2d_forward(X1, np.ones((1, 1, 2, 1), np.float32), None,
                                                             1, 1, 0, 0, 0, 0, I64_MAX, 1, 1),
    "max_pool H + 2 * ph": lambda: _core.max_pool2d_forward(X1, I64_MAX, 1, 1, 1, I64_MAX // 2, 0, 1, 1, False),
    "max_pool dh * (kh - 1)": lambda: _core.max_pool2d_forward(X1, 2**62, 1, 1, 1, 0, 0, 3, 1, False),
}


@pytest.mark.parametrize("case", sorted(CORE_GEOMETRY_OVERFLOW))
def test_core_geometry_overflow_names_the_overflow(case):
    """Guarantee 6: padding or dilation so large that the padded extent overflows int64 is reported as such."""
    with pytest.raises(ValueError, match="overflows int64") as info:
        CORE_GEOMETRY_OVERFLOW[case]()
    # names what overflowed (a wrapped value can trip a later, unrelated check)
    assert re.search(r"kernel|window|padd|dilat", str(info.value)), str(info.value)


FUNCTIONAL_OVERFLOW = {
    "conv2d output": lambda: F.conv2d(X1, np.ones((1, 1, 1, 1), np.float32), padding=2**31),
    "conv2d padded extent": lambda: F.conv2d(X1, W2, padding=(2**62, 0)),
    "conv2d dilated kernel": lambda: F.conv2d(X1, np.ones((1, 1, 2, 1), np.float32), dilation=(I64_MAX, 1)),
    "max_pool2d window": lambda: F.max_pool2d(X1, (2**62, 1), dilation=(3, 1)),
    "max_pool2d padded extent": lambda: F.max_pool2d(X1, (I64_MAX, 1), padding=(I64_MAX // 2, 0)),
    "avg_pool2d_backward x_shape": lambda: F.avg_pool2d_backward(DY1, (1, 1, 2**32, 2**32), 1, 2**32),
    "adaptive_avg_pool2d_backward x_shape": lambda: F.adaptive_avg_pool2d_backward(DY1, (1, 1, 2**32, 2**32), 1),
}


@pytest.mark.parametrize("case", sorted(FUNCTIONAL_OVERFLOW))
def test_functional_size_overflow_is_a_value_error(case):
    """Guarantee 6: striate.functional refuses sizes that overflow int64 with a ValueError saying so."""
    st.set_backend("cpp")
    with pytest.raises(ValueError, match="overflow"):
        FUNCTIONAL_OVERFLOW[case]()


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d", "lp_pool2d"])
def test_ceil_mode_with_a_huge_stride_keeps_the_output_size(op):
    """Guarantee 6: ceil_mode output size with stride 2**63-1 is computed without overflow (1, as the reference).

    Unchecked, stride - 1 + (padded - extent) wrapped and gave 0 output rows.
    """
    import striate.reference as R

    st.set_backend("cpp")
    args = (X1, 2, 1) if op == "lp_pool2d" else (X1, 1)
    ref = getattr(R, op)(*args, stride=I64_MAX, ceil_mode=True)
    out = getattr(F, op)(*args, stride=I64_MAX, ceil_mode=True)
    ref, out = (ref[0], out[0]) if op == "max_pool2d" else (ref, out)
    assert out.shape == ref.shape == (1, 1, 1, 1)


# ----------------------------------------------------------------------------- 7: OpenMP workers

_WORKER_SCRIPT = """
import numpy as np
import striate as st
import striate.functional as F
from striate import _core

assert st.get_num_threads() == {threads}, st.get_num_threads()
rng = np.random.default_rng(0)
x = rng.standard_normal((4, 16, 8, 8)).astype(np.float32)   # 64 planes: every worker gets some
y, idx = _core.max_pool2d_forward(x, 2, 2, 2, 2, 0, 0, 1, 1, False)
good = _core.max_pool2d_backward(y, idx, 8, 8)
for where in ("every plane", "first plane", "last plane"):
    bad = idx.copy()
    if where == "every plane":
        bad[..., 0, 0] = 64 + np.arange(64).reshape(4, 16)
    elif where == "first plane":
        bad[0, 0, 1, 1] = -5
    else:
        bad[-1, -1, -1, -1] = 2**40
    for call in (lambda: _core.max_pool2d_backward(y, bad, 8, 8),
                 lambda: F.max_pool2d_backward(y, bad, x.shape)):
        try:
            call()
        except ValueError as e:
            assert "`indices`" in str(e), e
        else:
            raise SystemExit("no error for " + where)
# the pool is still usable afterwards and gives the same result
assert np.array_equal(_core.max_pool2d_backward(y, idx, 8, 8), good)
print("ok")
"""


@pytest.mark.parametrize("threads", [2, 3, 8])
def test_worker_exceptions_are_rethrown_after_the_region(threads):
    """Guarantee 7: an exception thrown inside OpenMP workers reaches Python as ValueError; no std::terminate.

    Runs in a fresh process with STRIATE_NUM_THREADS set, so that a terminate
    (SIGABRT) would show as the exit status instead of killing the test run.
    Bad indices in every plane make several workers throw at once.
    """
    r = _run(_WORKER_SCRIPT.format(threads=threads), STRIATE_NUM_THREADS=threads, timeout=120)
    assert r.returncode == 0, f"exit status {r.returncode}\n{r.stderr[-3000:]}"
    assert r.stdout.strip() == "ok"


# ----------------------------------------------------------------------------- 8: GIL


def _ticks_during(call):
    """Run ``call`` on a worker thread; return (call seconds, main-thread ticks in the middle half of the call)."""
    span = {}

    def work():
        span["t0"] = time.perf_counter()
        call()
        span["t1"] = time.perf_counter()

    ticks = []
    t = threading.Thread(target=work)
    t.start()
    while t.is_alive():
        ticks.append(time.perf_counter())
    t.join()
    t0, t1 = span["t0"], span["t1"]
    lo, hi = t0 + 0.25 * (t1 - t0), t1 - 0.25 * (t1 - t0)
    return t1 - t0, sum(lo < v < hi for v in ticks)


def test_another_thread_runs_during_a_long_convolution():
    """Guarantee 8: the GIL is released around the kernels: Python code keeps running during a long conv.

    The main thread counts loop iterations while a worker thread is inside
    one conv2d (forward, then backward) call. With the GIL held for the call,
    no iteration could happen in the middle half of it.
    """
    st.set_backend("cpp")
    st.set_num_threads(1)  # one core for the kernel, the other for the counting thread
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 32, 40, 40)).astype(np.float32)
    w = rng.standard_normal((48, 32, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((4, 48, 40, 40)).astype(np.float32)
    calls = {
        "conv2d": lambda: F.conv2d(x, w, padding=1),
        "conv2d_backward": lambda: F.conv2d_backward(dy, x, w, padding=1),
    }
    for name, call in calls.items():
        best = (0.0, 0)
        for _ in range(3):  # a heavily loaded machine may starve the counting thread once
            seconds, ticks = _ticks_during(call)
            best = max(best, (seconds, ticks), key=lambda s: s[1])
            if ticks >= 5:
                break
        assert best[1] >= 5, f"{name}: {best[1]} Python iterations during the middle of a {best[0]:.3f} s call"


def _released_blocks():
    """(file, line, code) for the code that runs after each ``py::gil_scoped_release`` up to its scope's end.

    A binding that calls ``call_without_gil(kernel, args...)`` (bind_util.hpp)
    releases the GIL there: its arguments are evaluated before the release, so
    the code run without the GIL is the helper's own block, scanned with the
    headers; the call site is yielded with no code.
    """
    for path in sorted((REPO / "csrc").glob("*.cpp")):
        text = path.read_text()
        for m in re.finditer(r"\bcall_without_gil\(", text):
            yield path.name, text.count("\n", 0, m.start()) + 1, ""
    for path in sorted((REPO / "csrc").glob("*.cpp")) + sorted((REPO / "csrc").glob("*.hpp")):
        text = path.read_text()
        for m in re.finditer(r"py::gil_scoped_release\s+\w+\s*;", text):
            depth, i = 0, m.end()
            while i < len(text):
                if text[i] == "{":
                    depth += 1
                elif text[i] == "}":
                    if depth == 0:
                        break
                    depth -= 1
                i += 1
            yield path.name, text.count("\n", 0, m.start()) + 1, text[m.end():i]


def test_no_python_api_while_the_gil_is_released():
    """Guarantee 8: while the GIL is released, the bindings call no Python or pybind11 API (static check).

    Every ``py::gil_scoped_release`` scope holds only kernel calls on raw
    pointers taken before the release; and each binding file releases the GIL.
    """
    blocks = list(_released_blocks())
    assert {f for f, _, _ in blocks} >= {"bind_conv.cpp", "bind_pool.cpp", "bind_gemm.cpp", "bind_augment.cpp"}
    for fname, line, code in blocks:
        bad = re.search(r"\bpy::|\.attr\(|\.cast<|\.request\(|\bPy[A-Z_]", code)
        assert bad is None, f"{fname}:{line}: {bad.group(0)!r} used while the GIL is released"


# ----------------------------------------------------------------------------- 10: no pickle


class _Payload:
    """Unpickling this creates the marker file: proof that a loader ran pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def _write_loaders_inputs(d, marker):
    """Every file-reading entry point, each offered pickle bytes; returns {name: call}."""
    from striate import onnx_io, training, transfer
    from striate.datasets import load_cifar10, load_mnist

    blob = pickle.dumps(_Payload(str(marker)), protocol=2)
    blob4 = pickle.dumps(_Payload(str(marker)), protocol=4)
    calls = {}

    mn = d / "mnist_raw"
    mn.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (mn / stem).write_bytes(blob)
    calls["load_mnist raw"] = lambda: load_mnist(mn)
    mg = d / "mnist_gz"
    mg.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (mg / (stem + ".gz")).write_bytes(gzip.compress(blob4))
    calls["load_mnist gz"] = lambda: load_mnist(mg)

    cp = d / "cifar" / "cifar-10-batches-py"
    cp.mkdir(parents=True)
    for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cp / stem).write_bytes(blob)
    calls["load_cifar10 py"] = lambda: load_cifar10(d / "cifar")
    # a well-formed batch dict whose label list carries the payload
    cq = d / "cifar2" / "cifar-10-batches-py"
    cq.mkdir(parents=True)
    batch = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Payload(str(marker))]}
    for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cq / stem).write_bytes(pickle.dumps(batch, protocol=2))
    calls["load_cifar10 py, payload inside the batch"] = lambda: load_cifar10(d / "cifar2")
    cb = d / "cifar3" / "cifar-10-batches-bin"
    cb.mkdir(parents=True)
    for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cb / (stem + ".bin")).write_bytes(blob)
    calls["load_cifar10 bin"] = lambda: load_cifar10(d / "cifar3")

    pk = d / "model.safetensors"
    pk.write_bytes(blob)
    calls["st.load"] = lambda: st.load(pk)
    calls["io.read_file"] = lambda: io.read_file(pk)
    calls["io.read_file without checksums"] = lambda: io.read_file(pk, require_checksums=False)
    calls["io.read_header"] = lambda: io.read_header(pk)
    model = Sequential([L.Flatten(), L.Linear(4, 2)])
    calls["io.load_weights"] = lambda: io.load_weights(model, pk)
    calls["transfer.load_checked"] = lambda: transfer.load_checked(model, pk)
    # a header whose length field points at pickle bytes
    hdr = d / "header.safetensors"
    hdr.write_bytes(len(blob).to_bytes(8, "little") + blob)
    calls["st.load, pickle as header"] = lambda: st.load(hdr)
    calls["training.load_checkpoint"] = lambda: training.load_checkpoint(pk, model)
    x = np.zeros((8, 1, 2, 2), np.float32)
    y = np.zeros(8, np.int64)
    calls["fit(resume_from=)"] = lambda: fit(model, x, y, epochs=1, verbose=0, resume_from=pk)
    calls["fit(resume_from=), pickle as header"] = lambda: fit(model, x, y, epochs=1, verbose=0, resume_from=hdr)
    try:
        import onnx  # noqa: F401

        on = d / "model.onnx"
        on.write_bytes(blob)
        calls["onnx_io.import_model"] = lambda: onnx_io.import_model(on)
    except ImportError:  # pragma: no cover - onnx is an optional extra
        pass
    # .npy inputs of the command line: an object array pickles its items
    npy = d / "image.npy"
    np.save(npy, np.array([_Payload(str(marker))], dtype=object), allow_pickle=True)
    model_path = d / "good.safetensors"
    Sequential([L.Flatten(), L.Linear(4, 2)]).save(model_path)
    from striate import cli

    calls["striate predict .npy"] = lambda: cli.main(["predict", str(model_path), str(npy)])
    calls["striate visualize --input .npy"] = lambda: cli.main(
        ["visualize", str(model_path), "--out", str(d / "viz"), "--input", str(npy)])
    return calls


def test_pickle_payload_is_refused_by_every_loader(tmp_path, capsys):
    """Guarantee 10: pickle bytes offered to every loader are refused, and the payload never runs.

    MNIST (raw and .gz), CIFAR-10 (python batches, binary batches), st.load,
    io.read_file/read_header/load_weights, transfer.load_checked, training
    checkpoints (load_checkpoint, fit(resume_from=)), onnx_io.import_model and
    the .npy inputs of the command line. The payload is live: plain
    pickle.loads does create the marker.
    """
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(str(probe)))).close()
    assert probe.exists()
    marker = tmp_path / "pwned"
    calls = _write_loaders_inputs(tmp_path, marker)
    for name, call in calls.items():
        try:
            status = call()
        except (ValueError, TypeError) as exc:  # FormatError is a ValueError
            assert str(exc), name
        else:
            assert name.startswith("striate "), f"{name}: accepted a pickle file"
            assert status == 1, f"{name}: exit status {status}"  # a runtime error, not a usage error
            assert "pickle" in capsys.readouterr().err.lower()
        assert not marker.exists(), f"{name} ran the pickle payload"


# ----------------------------------------------------------------------------- 13: non-finite values


class _Snap(Callback):
    def __init__(self):
        self.last = None

    def on_batch_end(self, step, logs=None):
        self.last = (self.model.state_dict(), pickle.dumps(self.optimizer.state_dict()))


def test_divergence_stops_fit_with_parameters_and_adam_state_intact():
    """Guarantee 13: a run that diverges by itself stops with NonFiniteError naming epoch and step.

    Adam with an absurd learning rate overflows the weights within a few
    steps; the model and the optimizer state (moments, step count) must be
    those after the last finite step.
    """
    st.seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    model = Sequential([L.Conv2d(1, 2, 3), L.ReLU(), L.Flatten(), L.Linear(32, 3)])
    opt = optim.Adam(model.parameters(), lr=1e37)
    snap = _Snap()
    with pytest.raises(NonFiniteError) as info:
        fit(model, x, y, epochs=5, batch_size=8, optimizer=opt, seed=0, callbacks=[snap], verbose=0)
    err = info.value
    assert re.search(rf"epoch {err.epoch}\b.*step {err.step}\b", str(err)), str(err)
    assert snap.last is not None, "the first step already diverged: no finite state to compare with"
    before_model, before_opt = snap.last
    after = model.state_dict()
    assert all(np.array_equal(after[k], v) for k, v in before_model.items())
    assert all(np.isfinite(v).all() for v in after.values())
    assert pickle.dumps(opt.state_dict()) == before_opt


# ----------------------------------------------------------------------------- 14: atomic saves

_SAVER = """
import sys
import numpy as np
import striate as st
from striate import layers as L

path = sys.argv[1]
model = st.Sequential([L.Linear(1000, 1500)])  # 6 MB of weights: a save takes a while
gen = 0
while True:
    model[0].weight.data[...] = gen
    model[0].bias.data[...] = gen
    model.save(path)
    print(gen, flush=True)
    gen += 1
"""


def _generation(path):
    m = st.load(path)
    w, b = m[0].weight.data, m[0].bias.data
    g = float(b[0])
    assert (w == g).all() and (b == g).all(), "a mix of two saves"
    return int(g)


def test_sigkill_during_saves_leaves_a_loadable_file(tmp_path):
    """Guarantee 14: SIGKILL at many points of repeated saves; the file always loads, old or new, never mixed.

    A child process saves generation after generation to the same path and
    prints each number once its save returned. It is killed after varying
    delays, landing in the writing, hashing, fsync or rename of a save. The
    file must load and hold either the last reported generation or the next.
    """
    path = tmp_path / "model.safetensors"
    delays = [0.0, 0.003, 0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.25, 0.4]
    for delay in delays:
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_env())
        try:
            first = proc.stdout.readline()  # one complete save before the kill
            assert first.strip() == "0", proc.stderr.read()
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        last = int(([first] + out.split())[-1])
        assert _generation(path) in (last, last + 1), delay
    # At most the last killed save's temp file (the next save removes it), in striate's own pattern.
    leftovers = [p for p in os.listdir(tmp_path) if p != path.name]
    assert len(leftovers) <= 1 and all(re.fullmatch(r"\.model\.safetensors\.\d+\.\w+\.striate-tmp", p)
                                       for p in leftovers), leftovers


def test_successful_saves_leave_no_temp_files(tmp_path):
    """Guarantee 14: after successful saves (models, raw files, checkpoints) the folder holds only the targets."""
    from striate.training import save_checkpoint

    model = Sequential([L.Conv2d(1, 2, 3), L.BatchNorm2d(2), L.Flatten(), L.Linear(8, 3)])
    opt = optim.Adam(model.parameters())
    for _ in range(3):
        model.save(tmp_path / "m.safetensors")
        io.write_file(tmp_path / "t.safetensors", {"a": np.arange(3, dtype=np.float32)})
        save_checkpoint(tmp_path / "c.ckpt", model, opt, {"epoch": 1})
    assert sorted(os.listdir(tmp_path)) == ["c.ckpt", "m.safetensors", "t.safetensors"]


def test_save_order_is_write_fsync_replace_fsync_folder(tmp_path, monkeypatch):
    """Guarantee 14: the temp file lives in the target's folder, is fsynced before os.replace, the folder after."""
    import stat

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        mode = os.fstat(fd).st_mode
        events.append(("fsync", "dir" if stat.S_ISDIR(mode) else "file"))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.dirname(os.path.abspath(src)) == str(tmp_path), Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "fsync", fsync)
    monkeypatch.setattr(io.os, "replace", replace)
    Sequential([L.Flatten(), L.Linear(4, 2)]).save(tmp_path / "m.safetensors")
    assert events == [("fsync", "file"), ("replace", True, "m.safetensors"), ("fsync", "dir")]


# ----------------------------------------------------------------------------- 15 + 16: whole runs in fresh processes

_RUN = """
import hashlib, json, sys
import numpy as np
import striate as st
from striate import augment as A, layers as L, optim
from striate.datasets import load_digits

epochs, ckpt, resume, bn = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "resume", sys.argv[4] == "bn"
(x, y), (xt, yt) = load_digits(size=12)
x, y, xt, yt = x[:192], y[:192], xt[:64], yt[:64]
st.seed(99 if resume else 5)  # a resumed run starts from another init: the checkpoint must replace it
model = st.Sequential([
    L.Conv2d(1, 6, 3, padding=1), L.BatchNorm2d(6) if bn else L.Tanh(), L.ReLU(), L.MaxPool2d(2),
    L.Conv2d(6, 8, 3, padding=1, groups=2), L.ReLU(), L.AvgPool2d(2), L.Dropout(0.3),
    L.Flatten(), L.Linear(72, 32), L.ReLU(), L.Dropout(0.2), L.Linear(32, 10),
])
aug = A.Compose([A.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
                 A.RandomCrop(12, padding=1), A.RandomHorizontalFlip(0.3)])
kw = dict(epochs=epochs, batch_size=24, augment=aug, validation_data=(xt, yt), verbose=0)
if resume:
    h = model.fit(x, y, resume_from=ckpt, **kw)
else:
    opt = optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    h = model.fit(x, y, optimizer=opt, seed=11, checkpoint=ckpt if ckpt != "-" else None, **kw)
sd = model.state_dict()
digest = hashlib.sha256()
for k in sorted(sd):
    digest.update(k.encode())
    digest.update(np.ascontiguousarray(sd[k]).tobytes())
print(json.dumps({"threads": st.get_num_threads(), "hash": digest.hexdigest(), "loss": h.history["loss"],
                  "val_accuracy": h.history["val_accuracy"]}))
"""


def _fit_in_process(threads, epochs, ckpt="-", resume=False, bn=True):
    r = _run(_RUN, epochs, ckpt, "resume" if resume else "fresh", "bn" if bn else "-",
             STRIATE_NUM_THREADS=threads, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["threads"] == threads
    return out


def test_whole_fit_is_identical_for_every_STRIATE_NUM_THREADS():
    """Guarantee 16: a whole fit (dropout, BatchNorm, grouped conv, striate.augment, Adam) in fresh processes
    with STRIATE_NUM_THREADS = 1, 2, 3 and 8 gives the same weights hash and the same loss history."""
    runs = [_fit_in_process(n, epochs=2) for n in (1, 2, 3, 8)]
    for r in runs[1:]:
        assert r["hash"] == runs[0]["hash"], (r["threads"], runs[0]["threads"])
        assert r["loss"] == runs[0]["loss"] and r["val_accuracy"] == runs[0]["val_accuracy"]


@pytest.mark.parametrize("bn", [False, True], ids=["no-batchnorm", "batchnorm"])
def test_resume_in_fresh_processes_on_other_thread_counts(tmp_path, bn):
    """Guarantee 15: 2N epochs straight == N epochs, checkpoint, N more in another process, bitwise.

    With dropout, striate.augment's C++ transforms, Adam (whose moments and
    step count must come back) and, in one variant, BatchNorm (whose 0-d
    num_batches_tracked a checkpoint once turned 1-d). The three runs use 1, 3
    and 2 threads, so the resume also crosses thread counts (item 16).
    """
    ckpt = tmp_path / "run.ckpt"
    first = _fit_in_process(1, epochs=2, ckpt=ckpt, bn=bn)
    resumed = _fit_in_process(3, epochs=4, ckpt=ckpt, resume=True, bn=bn)
    straight = _fit_in_process(2, epochs=4, bn=bn)
    assert first["hash"] != straight["hash"]
    assert resumed["hash"] == straight["hash"]
    assert resumed["loss"] == straight["loss"]
    assert resumed["val_accuracy"] == straight["val_accuracy"]


def test_checkpoint_round_trip_keeps_zero_dim_buffers(tmp_path):
    """Guarantee 15: a checkpoint of a model with BatchNorm (0-d num_batches_tracked) loads back into it."""
    from striate.training import load_checkpoint, save_checkpoint

    model = Sequential([L.Conv2d(1, 2, 3), L.BatchNorm2d(2), L.Flatten(), L.Linear(8, 3)])
    save_checkpoint(tmp_path / "c.ckpt", model, None)
    load_checkpoint(tmp_path / "c.ckpt", model)
    assert model.state_dict()["1.num_batches_tracked"].shape == ()


# ----------------------------------------------------------------------------- Tools: sanitizers


def test_sanitizer_script_and_build_option():
    """Guarantee Tools: an ASan+UBSan build option and a script that runs the suite with the runtimes preloaded.

    (The script itself is run by hand or in CI: ``tools/sanitize.sh``; a full
    run takes minutes.)
    """
    script = (REPO / "tools" / "sanitize.sh").read_text()
    assert os.access(REPO / "tools" / "sanitize.sh", os.X_OK)
    for needle in ("STRIATE_SANITIZE=ON", "libasan.so", "libubsan.so", "LD_PRELOAD", "detect_leaks=0",
                   "halt_on_error=1", "PYTHONMALLOC=malloc", "tests/test_core_hostile.py"):
        assert needle in script, needle
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert "STRIATE_SANITIZE" in cmake
    assert "-fsanitize=address,undefined" in cmake
    assert "-fno-sanitize-recover=undefined" in cmake
