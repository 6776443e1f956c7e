// parallel.hpp: the one place in striate that opens OpenMP regions.
//
// Every kernel parallelises through parallel_for(). Work is split over
// independent output items only (images, channels, output tiles), never over a
// reduction, so results are bit-identical for any thread count. An exception
// thrown inside a worker is captured there and rethrown on the calling thread
// after the region; std::terminate never runs.
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

}  // namespace striate
