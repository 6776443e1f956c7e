// parallel.hpp: the one place in striate that opens OpenMP regions.
//
// Every kernel parallelises through parallel_for() or its multi-dimensional
// forms parallel_for_2d() / parallel_for_3d(), which flatten their index space
// row-major into one parallel_for(): the `#pragma omp` below is the only one in
// striate. Work is split over independent output items only (images, channels,
// output tiles), never over a reduction, so results are bit-identical for any
// thread count. The static schedule hands each thread one contiguous range of
// the flat index. An exception thrown inside a worker is captured there and
// rethrown on the calling thread after the region; std::terminate never runs.
//
// Not here: any numeric code, any allocation policy beyond the thread count.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>

#ifdef STRIATE_HAVE_OPENMP
#include <omp.h>
#endif

namespace striate {

// Threads used by every kernel; always >= 1.
int get_num_threads();
// n < 1 is rejected with std::invalid_argument.
void set_num_threads(int n);
// Index of the calling thread inside a parallel_for region, 0 outside one.
inline int thread_index() {
#ifdef STRIATE_HAVE_OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}
// True while the caller runs inside a parallel_for region.
inline bool in_parallel_region() {
#ifdef STRIATE_HAVE_OPENMP
    return omp_in_parallel() != 0;
#else
    return false;
#endif
}

// Calls f(i) for every i in [0, n), spread over at most `threads` threads
// (get_num_threads() when threads <= 0). Iterations must be independent.
// Called from inside a region, it runs serially (no nested parallelism).
template <class F>
void parallel_for(int64_t n, F&& f, int threads = 0) {
    if (n <= 0) return;
    int nt = threads > 0 ? threads : get_num_threads();
    if (nt > n) nt = static_cast<int>(n);
    if (nt <= 1 || in_parallel_region()) {
        for (int64_t i = 0; i < n; ++i) f(i);
        return;
    }
#ifdef STRIATE_HAVE_OPENMP
    std::exception_ptr error = nullptr;
    std::atomic<bool> failed{false};
    std::mutex error_mutex;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        if (failed.load(std::memory_order_relaxed)) continue;
        try {
            f(i);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (!error) error = std::current_exception();
            failed.store(true, std::memory_order_relaxed);
        }
    }
    if (error) std::rethrow_exception(error);
#else
    for (int64_t i = 0; i < n; ++i) f(i);
#endif
}

// Calls f(i, j) for every i in [0, n0), j in [0, n1): parallel_for over the
// n0 * n1 pairs in row-major order (j fastest), so a thread's range covers
// whole rows where it can. n0 * n1 must fit in int64 (callers size their
// grids with shape.hpp's checked products).
template <class F>
void parallel_for_2d(int64_t n0, int64_t n1, F&& f, int threads = 0) {
    if (n0 <= 0 || n1 <= 0) return;
    parallel_for(
        n0 * n1, [&](int64_t t) { f(t / n1, t % n1); }, threads);
}

// Calls f(i, j, k) for every i < n0, j < n1, k < n2, row-major (k fastest).
template <class F>
void parallel_for_3d(int64_t n0, int64_t n1, int64_t n2, F&& f, int threads = 0) {
    if (n0 <= 0 || n1 <= 0 || n2 <= 0) return;
    const int64_t n12 = n1 * n2;
    parallel_for(
        n0 * n12, [&](int64_t t) { f(t / n12, (t % n12) / n2, t % n2); }, threads);
}

}  // namespace striate
