"""Data-parallel training throughput: images/s with 1 and 2 MPI ranks, 1 thread each.

    python benchmarks/bench_distributed.py [--model lenet5|typical_cnn] [--epochs 2] [--ranks 1 2]

Each configuration runs `fit(..., distributed=True)` under `mpiexec -n K` on the
embedded digits (LeNet-5) or random 3x32x32 data (typical_cnn) with a global
batch of 64, after checking that the ranks end with identical weights. Prints a
markdown table. Needs the [mpi] extra.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    import numpy as np
    import striate as st
    from striate import distributed as D, optim
    from striate.datasets import load_digits

    model_name, epochs, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    st.set_num_threads(1)
    st.seed(0)
    if model_name == "lenet5":
        (x, y), _ = load_digits()
        model = st.zoo.lenet5()
    else:
        rng = np.random.default_rng(0)
        x = rng.random((2048, 3, 32, 32), dtype=np.float32)
        y = rng.integers(0, 10, 2048)
        model = st.zoo.typical_cnn()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.fit(x[:256], y[:256], epochs=1, batch_size=64, optimizer=opt, verbose=0, seed=0, distributed=True)  # warm-up
    D.comm().Barrier()
    t0 = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=64, optimizer=opt, verbose=0, seed=1, distributed=True)
    D.comm().Barrier()
    dt = time.perf_counter() - t0
    w = np.concatenate([p.data.ravel() for p in model.parameters()])
    with open(f"{out}.{D.rank()}.json", "w") as f:
        json.dump({"images_per_s": epochs * len(x) / dt, "seconds": dt, "checksum": float(w.sum()),
                   "bytes": w.tobytes().hex()[:64]}, f)
    """
)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("lenet5", "typical_cnn"), default="lenet5")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        sys.exit("mpiexec not found: pip install 'striate[mpi]'")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "worker.py")
        with open(script, "w") as f:
            f.write(WORKER)
        for k in args.ranks:
            out = os.path.join(tmp, f"r{k}")
            env = dict(os.environ, STRIATE_NUM_THREADS="1", OMP_NUM_THREADS="1")
            subprocess.run([exe, "-n", str(k), sys.executable, script, args.model, str(args.epochs), out],
                           check=True, env=env)
            res = [json.load(open(f"{out}.{r}.json")) for r in range(k)]
            if len({r["bytes"] for r in res}) != 1:
                sys.exit(f"ranks disagree on the weights with {k} ranks")
            rows.append((k, min(r["images_per_s"] for r in res)))
    base = rows[0][1]
    print(f"| model | ranks x threads | images/s | speed-up |\n|---|---|---|---|")
    for k, ips in rows:
        print(f"| {args.model} | {k} x 1 | {ips:,.0f} | {ips / base:.2f}x |")


if __name__ == "__main__":
    main()
