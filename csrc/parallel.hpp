// parallel.hpp: the one place in striate that opens OpenMP regions.
//
// Every kernel parallelises through parallel_for() or its multi-dimensional
// forms parallel_for_2d() / parallel_for_3d(), which flatten their index space
// row-major into one parallel_for(): the `#pragma omp` below is the only one in
// striate. Work is split over independent output items only (images, channels,
// output tiles), never over a reduction, so results are bit-identical for any
// thread count. Each thread starts on one contiguous range of the flat index,
// as a static schedule would, and a thread done with its own takes the items
// the others have not started (whichever thread runs an item, it computes the
// same values). An exception thrown inside a worker is captured there and
// rethrown on the calling thread after the region; std::terminate never runs.
// (The one other region, in parallel.cpp, only starts new workers.)
//
// Not here: any numeric code, any allocation policy beyond the thread count.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>

#ifdef STRIATE_HAVE_OPENMP
#include <omp.h>
#endif

namespace striate {

// The largest accepted thread count (set_num_threads, STRIATE_NUM_THREADS).
constexpr int kMaxThreads = 1024;

// Threads used by every kernel; always >= 1 (1 in a child forked after a region ran).
int get_num_threads();
// n outside [1, kMaxThreads] is rejected with std::invalid_argument; a count
// the process cannot start threads for raises std::runtime_error (the count
// then stays as it was).
void set_num_threads(int64_t n);
// False in a process forked after an OpenMP region ran (its pool is unusable).
bool openmp_usable();
// The team size to open a region with, for nt >= 2 working threads of an
// explicit `threads` request (0: none): the calling thread's pool, brought to
// max(get_num_threads(), threads) first. Smaller than nt when the threads
// cannot be created (see above); 1 means run serially.
int plan_team(int nt, int threads);
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

// A worker's range of parallel_for items: the next unclaimed one and the end
// (a cache line each, so that workers claiming their own items share none).
struct alignas(64) RangeCursor {
    std::atomic<int64_t> next{0};
    int64_t end = 0;
};
constexpr int kInlineCursors = 8;  // cursors on the caller's stack; more teams allocate

// First item of worker t's range when n items are split over nt workers (the
// first n % nt ranges one item longer); range_begin(nt, n, nt) == n.
inline int64_t range_begin(int64_t t, int64_t n, int64_t nt) {
    const int64_t q = n / nt, r = n % nt;
    return t * q + (t < r ? t : r);
}

// Calls f(i) for every i in [0, n), spread over at most `threads` threads
// (get_num_threads() when threads <= 0). Iterations must be independent: any
// thread may run any of them. Called from inside a region, it runs serially
// (no nested parallelism). Worker t < nt starts on the t-th of nt contiguous
// ranges (the first n % nt ranges one item longer), as OpenMP's static
// schedule would, claiming its items in order; when its range is done it
// claims the unstarted items of the other ranges in turn. Each item costs one
// uncontended atomic increment. On a quiet machine the ranges finish together
// and nothing moves; when one worker starts late or shares its core with
// other work, the others take over its items instead of waiting for it at the
// end of the region (Zen 4, 2 threads, a training step interleaved with the
// static split in one process: TF-tutorial CNN 0.99-1.02x on AVX-512 and
// 1.00-1.10x on AVX2, ResNet-20 1.03x and 1.13x, the higher figures while other
// work shared the machine; LeNet-5 0.98-1.01x). The region always has the
// calling thread's whole team (plan_team), so that libgomp never retires and
// later re-creates workers between regions of different sizes.
template <class F>
void parallel_for(int64_t n, F&& f, int threads = 0) {
    if (n <= 0) return;
    int nt = threads > 0 ? threads : get_num_threads();
    if (nt > n) nt = static_cast<int>(n);
    int team = 1;
    if (nt > 1 && !in_parallel_region()) team = plan_team(nt, threads);
    if (nt > team) nt = team;
    if (nt <= 1) {
        for (int64_t i = 0; i < n; ++i) f(i);
        return;
    }
#ifdef STRIATE_HAVE_OPENMP
    std::exception_ptr error = nullptr;
    std::atomic<bool> failed{false};
    std::mutex error_mutex;
    RangeCursor small[kInlineCursors];  // one cursor per worker's range
    std::unique_ptr<RangeCursor[]> large;
    RangeCursor* cur = small;
    if (nt > kInlineCursors) {
        large.reset(new RangeCursor[static_cast<size_t>(nt)]);
        cur = large.get();
    }
    for (int t = 0; t < nt; ++t) {
        cur[t].next.store(range_begin(t, n, nt), std::memory_order_relaxed);
        cur[t].end = range_begin(t + 1, n, nt);
    }
    auto run = [&](int64_t i) {
        try {
            f(i);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (!error) error = std::current_exception();
            failed.store(true, std::memory_order_relaxed);
        }
    };
#pragma omp parallel num_threads(team)
    {
        const int t = omp_get_thread_num();
        for (int v = 0; v < nt && t < nt; ++v) {  // own range first, then the others' in turn
            RangeCursor& c = cur[(t + v) % nt];
            while (!failed.load(std::memory_order_relaxed)) {
                const int64_t i = c.next.fetch_add(1, std::memory_order_relaxed);
                if (i >= c.end) break;
                run(i);
            }
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
