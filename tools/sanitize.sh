#!/usr/bin/env bash
# Build striate._core with AddressSanitizer + UndefinedBehaviorSanitizer and run
# the test suite against it with the sanitizer runtimes preloaded.
#
#   tools/sanitize.sh [pytest args...]      e.g. tools/sanitize.sh -x -q tests/test_functional.py
#
# Without a test path it runs the whole suite, which includes
# tests/test_core_hostile.py: direct _core calls with hostile arguments
# (misaligned, negative-stride and overflowing buffers, wrong dtypes, huge
# ints), so that undefined behaviour on those paths aborts the run as well.
#
# The sanitized module is built into a scratch copy of python/, so the source
# tree and any installed striate are left alone. Any ASan report or UBSan
# finding aborts the run (halt_on_error, -fno-sanitize-recover=undefined).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${STRIATE_SANITIZE_DIR:-$(mktemp -d)}"
mkdir -p "$work"
rm -rf "$work/python"
cp -r "$repo/python" "$work/python"
find "$work/python" -name '_core*.so' -delete

cmake -S "$repo" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSTRIATE_SANITIZE=ON -DSTRIATE_OUTPUT_DIR="$work/python/striate" \
  -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" >/dev/null
cmake --build "$work/build" -j"$(nproc)"

preload="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)"
cd "$repo"
args=("$@")
has_path=0
for a in "$@"; do [[ "$a" != -* ]] && has_path=1; done
[[ "$has_path" == 1 ]] || args+=("tests")
# Subprocess tests inherit the preload; mpiexec's launcher is not sanitized, so
# the MPI test runs in the normal suite only.
# allocator_may_return_null: an absurd allocation (a hostile length field in a
# fuzzed file) fails as it does without ASan, and the code must turn the
# MemoryError into its documented error. --capture=sys: pytest still captures
# Python output, but a sanitizer report written to fd 2 reaches the log even
# when it aborts the run.
LD_PRELOAD="$preload" \
ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
PYTHONMALLOC=malloc PYTHONPATH="$work/python" STRIATE_SKIP_MPI_TESTS=1 \
  python3 -m pytest -p no:cacheprovider --capture=sys "${args[@]}"
