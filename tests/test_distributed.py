"""Data-parallel primitives over MPI (issue 9): sharding, broadcast, gradient averaging."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from striate import distributed as D


@pytest.mark.parametrize("n,k", [(10, 2), (7, 2), (1, 3), (0, 2), (64, 3), (5, 8)])
def test_shard_covers_every_sample_once(n, k):
    parts = [D.shard(n, r, k) for r in range(k)]
    covered = np.concatenate([np.arange(n)[s] for s in parts])
    assert covered.tolist() == list(range(n))
    sizes = [s.stop - s.start for s in parts]
    assert max(sizes) - min(sizes) <= 1


def test_single_process_defaults():
    pytest.importorskip("mpi4py")
    assert D.size() >= 1
    assert 0 <= D.rank() < D.size()


def _mpiexec():
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return exe


def run_mpi(script, n=2, timeout=240, env_extra=None):
    """Run `script` under `mpiexec -n n` with this interpreter; returns stdout lines per rank."""
    pytest.importorskip("mpi4py")
    if os.environ.get("STRIATE_SKIP_MPI_TESTS"):
        pytest.skip("STRIATE_SKIP_MPI_TESTS is set (the sanitizer run)")
    exe = _mpiexec()
    if exe is None:
        pytest.skip("mpiexec not found (install the [mpi] extra)")
    env = dict(os.environ)
    env.update({"STRIATE_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    env.update(env_extra or {})
    out = subprocess.run(
        [exe, "-n", str(n), sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_broadcast_and_allreduce_under_mpiexec(tmp_path):
    """Rank 0's weights reach every rank; gradients are averaged weighted by shard size."""
    run_mpi(
        """
        import json, os
        import numpy as np, striate as st
        from striate import distributed as D, zoo
        st.seed(D.rank())              # different initial weights on each rank
        m = zoo.lenet5()
        D.broadcast_model(m)
        for p in m.parameters():       # rank r's gradient is r + 1 everywhere
            p.grad = np.full_like(p.data, D.rank() + 1)
        local = [3, 1][D.rank()]
        D.allreduce_gradients(m.parameters(), local, 4)
        g = m.parameters()[0].grad
        w = np.concatenate([p.data.ravel() for p in m.parameters()])
        out = os.path.join(os.environ["STRIATE_TEST_OUT"], f"rank{D.rank()}.json")
        with open(out, "w") as f:
            json.dump({"size": D.size(), "w": w.tobytes().hex(), "gmin": float(g.min()), "gmax": float(g.max()),
                       "seed": D.broadcast_int(41 + D.rank())}, f)
        """,
        env_extra={"STRIATE_TEST_OUT": str(tmp_path)},
    )
    rows = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["size"] for r in rows] == [2, 2]
    assert rows[0]["w"] == rows[1]["w"]                     # identical weights after broadcast
    want = (3 * 1 + 1 * 2) / 4                              # gradients weighted by shard size
    for r in rows:
        assert r["gmin"] == pytest.approx(want) and r["gmax"] == pytest.approx(want)
        assert r["seed"] == 41
