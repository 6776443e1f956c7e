// parallel.cpp: the process-wide thread count behind parallel.hpp.
#include "parallel.hpp"

#include <stdexcept>
#include <string>

namespace striate {

namespace {
std::atomic<int> g_num_threads{0};  // 0: not set yet, use the OpenMP default

int default_threads() {
#ifdef STRIATE_HAVE_OPENMP
    int n = omp_get_max_threads();
    return n > 0 ? n : 1;
#else
    return 1;
#endif
}
}  // namespace

int get_num_threads() {
    int n = g_num_threads.load(std::memory_order_relaxed);
    return n > 0 ? n : default_threads();
}

void set_num_threads(int n) {
    if (n < 1) {
        throw std::invalid_argument("`n` (number of threads) must be >= 1, got " + std::to_string(n));
    }
    g_num_threads.store(n, std::memory_order_relaxed);
}

}  // namespace striate
