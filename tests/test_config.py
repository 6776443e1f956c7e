"""Package-level settings: threads, backend and seed (docs/api.md, package level)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import striate as st


def test_version():
    assert isinstance(st.__version__, str) and st.__version__


def test_set_get_num_threads():
    st.set_num_threads(3)
    assert st.get_num_threads() == 3
    st.set_num_threads(1)
    assert st.get_num_threads() == 1


@pytest.mark.parametrize("bad", [0, -2])
def test_set_num_threads_rejects_non_positive(bad):
    with pytest.raises(ValueError, match="`n`"):
        st.set_num_threads(bad)


@pytest.mark.parametrize("bad", [1.5, "2", None, True])
def test_set_num_threads_rejects_non_int(bad):
    with pytest.raises(TypeError, match="`n`"):
        st.set_num_threads(bad)


def test_backend_switch():
    st.set_backend("numpy")
    assert st.get_backend() == "numpy"
    st.set_backend("cpp")
    assert st.get_backend() == "cpp"
    with pytest.raises(ValueError, match="`name`"):
        st.set_backend("cuda")


def _threads_in_fresh_process(env_update):
    env = {k: v for k, v in os.environ.items() if k not in ("STRIATE_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(env_update)
    out = subprocess.run(
        [sys.executable, "-c", "import striate; print(striate.get_num_threads())"],
        env=env, capture_output=True, text=True, check=True,
    )
    return int(out.stdout.strip())


def test_env_thread_count():
    assert _threads_in_fresh_process({"STRIATE_NUM_THREADS": "3"}) == 3
    assert _threads_in_fresh_process({"OMP_NUM_THREADS": "2"}) == 2
    assert _threads_in_fresh_process({"STRIATE_NUM_THREADS": "5", "OMP_NUM_THREADS": "2"}) == 5
    assert _threads_in_fresh_process({}) == len(os.sched_getaffinity(0))


def test_seed_validation():
    st.seed(0)
    with pytest.raises(ValueError, match="`s`"):
        st.seed(-1)
    with pytest.raises(TypeError, match="`s`"):
        st.seed("a")
