"""The process around the kernels: fork, multiprocessing and thread limits (Guarantee 18, 19).

Every scenario runs in a fresh interpreter under a timeout, so a regression
(a child blocked forever on GNU OpenMP's inherited pool, or libgomp ending the
process with "Thread creation failed") fails the test instead of hanging or
killing the suite.

Not here: determinism across thread counts (test_reliability.py, item 16),
hostile arguments to the kernels (test_core_hostile.py).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import striate as st

PYTHON_DIR = str(Path(st.__file__).resolve().parent.parent)
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")

# Inputs and one conv, pool and gemm result each, as bytes (compared bit for bit).
_KERNELS = """
import hashlib
import numpy as np
import striate as st
import striate.functional as F
from striate import _core

def compute():
    rng = np.random.default_rng(0)
    # the conv is above the size a forward runs on one thread (1 MFLOP), so compute() opens a parallel region
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    a = rng.standard_normal((70, 90)).astype(np.float32)
    b = rng.standard_normal((90, 50)).astype(np.float32)
    outs = [F.conv2d(x, w, padding=1), F.max_pool2d(x, 2), F.avg_pool2d(x, 3, stride=2), _core.matmul(a, b)]
    return hashlib.sha256(b"".join(np.ascontiguousarray(o).tobytes() for o in outs)).hexdigest()
"""


def _run(code, timeout=120, **env):
    full = dict(os.environ, PYTHONPATH=PYTHON_DIR, **{k: str(v) for k, v in env.items()})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full,
                          timeout=timeout)


def _run_file(path, timeout=120, **env):
    full = dict(os.environ, PYTHONPATH=PYTHON_DIR, **{k: str(v) for k, v in env.items()})
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=full, timeout=timeout)


# ----------------------------------------------------------------------------- 18: fork


_FORK_SCRIPT = _KERNELS + """
import os
st.set_num_threads(2)
parent = compute()          # the OpenMP pool now exists in this process
assert _core.openmp_usable()
pid = os.fork()
if pid == 0:
    ok = compute() == parent and not _core.openmp_usable() and st.get_num_threads() == 1
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert compute() == parent and st.get_num_threads() == 2   # the parent keeps its threads
print("ok")
"""


def test_fork_after_kernels_ran_child_computes_like_the_parent():
    """Guarantee 18: a child forked after the kernels ran computes bit-identical results and exits 0.

    Without the atfork handler the child's first parallel region waits forever
    for the parent's OpenMP workers, which do not exist in the child.
    """
    r = _run(_FORK_SCRIPT, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


_FORK_FIRST_SCRIPT = _KERNELS + """
import os
st.set_num_threads(2)
pid = os.fork()             # no region has run: the child may start its own pool
if pid == 0:
    ok = _core.openmp_usable() and st.get_num_threads() == 2
    h = compute()
    os._exit(0 if ok and h == compute() else 3)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
print("ok")
"""


def test_fork_before_any_kernel_keeps_threads_in_the_child():
    """Guarantee 18: a child forked before any region ran keeps its thread count and computes."""
    r = _run(_FORK_FIRST_SCRIPT, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


_POOL_SCRIPT = _KERNELS + """
import multiprocessing as mp
import sys

def work(_):
    return compute(), st.get_num_threads()

if __name__ == "__main__":
    st.set_num_threads(2)
    parent = compute()
    with mp.get_context(sys.argv[1]).Pool(2) as pool:
        got = pool.map(work, range(4), chunksize=1)
    assert all(h == parent for h, _ in got), got
    print("ok", sorted({n for _, n in got}))
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_pool_computes_like_the_parent(method, tmp_path):
    """Guarantee 18: ``multiprocessing.Pool`` with the fork and the spawn start method returns the parent's results.

    Forked workers run the kernels on one thread; spawned ones start fresh and
    keep the configured count. Both are bit-identical to the parent.
    """
    script = tmp_path / "pool_script.py"
    script.write_text(_POOL_SCRIPT.replace('sys.argv[1]', repr(method)))
    r = _run_file(script, timeout=180)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr
    assert r.stdout.split(" ", 1)[1].strip() == ("[1]" if method == "fork" else "[2]"), r.stdout


# ----------------------------------------------------------------------------- 19: thread limits


@pytest.mark.parametrize("n", [2**31, 1025, 10**20])
def test_set_num_threads_beyond_the_limit_names_it(n):
    """Guarantee 19: an absurd thread count is a ValueError naming the limit, and the count is unchanged."""
    before = st.get_num_threads()
    with pytest.raises(ValueError, match=rf"`n` must be between 1 and 1024 \(the thread limit\), got {n}"):
        st.set_num_threads(n)
    assert st.get_num_threads() == before
    assert st._config.MAX_THREADS == 1024


@pytest.mark.parametrize("var", ["STRIATE_NUM_THREADS", "OMP_NUM_THREADS"])
@pytest.mark.parametrize("raw", ["99999999999", "1025", "0"])
def test_thread_count_from_the_environment_names_the_variable_and_limit(var, raw):
    """Guarantee 19: STRIATE_NUM_THREADS / OMP_NUM_THREADS beyond the limit fail the import with that ValueError."""
    env = {"STRIATE_NUM_THREADS": "", "OMP_NUM_THREADS": "", var: raw}
    r = _run("import striate", **env)
    assert r.returncode != 0
    assert f"ValueError: environment variable {var} must be between 1 and 1024 (the thread limit), got '{raw}'" \
        in r.stderr, r.stderr


_LIMITED_SCRIPT = """
import resource, sys
limit = int(sys.argv[1]) << 20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import numpy as np
import striate as st
import striate.functional as F
from striate import _core
outcome = "set"
try:
    st.set_num_threads(int(sys.argv[2]))
except RuntimeError as e:
    outcome = "refused"
    assert "cannot run" in str(e) and st.get_num_threads() >= 1, e
try:
    hog = np.ones(int(sys.argv[3]) << 18, np.float32)   # memory taken after the count was accepted
except MemoryError:
    hog = None
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 3, 24, 24)).astype(np.float32)
w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
outs = [F.conv2d(x, w), F.max_pool2d(x, 2), _core.matmul(x.reshape(64, -1), x.reshape(64, -1), trans_b=True)]
st.set_num_threads(1)
ref = [F.conv2d(x, w), F.max_pool2d(x, 2), _core.matmul(x.reshape(64, -1), x.reshape(64, -1), trans_b=True)]
assert all(np.array_equal(a, b) for a, b in zip(outs, ref))
print(outcome)
"""


@pytest.mark.skipif(UNDER_ASAN, reason="an address-space limit does not combine with ASan's shadow memory")
@pytest.mark.parametrize("limit_mb, threads, hog_mb", [(1024, 300, 0), (900, 60, 300), (1100, 60, 100),
                                                      (700, 200, 500)])
def test_thread_creation_failure_is_an_exception_not_an_exit(limit_mb, threads, hog_mb, tmp_path):
    """Guarantee 19: under an address-space limit, too many threads never end the process.

    libgomp exits with status 1 ("Thread creation failed") when it cannot
    create a worker. set_num_threads raises RuntimeError when the threads
    cannot be started now; when memory runs short later, a kernel runs on the
    threads that can be started. Either way the results are the serial ones.
    """
    script = tmp_path / "limited.py"
    script.write_text(_LIMITED_SCRIPT)
    r = _run_file_args(script, limit_mb, threads, hog_mb)
    assert "Thread creation failed" not in r.stderr, r.stderr
    assert r.returncode == 0 and r.stdout.strip() in ("set", "refused"), r.stdout + r.stderr
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    if (limit_mb, threads) == (1024, 300) and stack != resource.RLIM_INFINITY and stack >= 4 << 20:
        assert r.stdout.strip() == "refused"   # 300 thread stacks of at least 4 MiB cannot fit in 1 GiB


def _run_file_args(path, *args, timeout=180):
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR, STRIATE_NUM_THREADS="", OMP_NUM_THREADS="")
    return subprocess.run([sys.executable, str(path), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)
