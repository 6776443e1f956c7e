// parallel.cpp: the process-wide thread count behind parallel.hpp, the fork
// handler that retires an inherited OpenMP pool, and the thread-creation probe
// that runs before a region needs new workers.
//
// Not here: the parallel_for templates (parallel.hpp), any kernel.
#include "parallel.hpp"

#include <pthread.h>
#include <sys/mman.h>

#include <cctype>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace striate {

namespace {
std::atomic<int> g_num_threads{0};  // 0: not set yet, use the OpenMP default
// Set before the first region opens; a child forked after that cannot use the pool.
std::atomic<bool> g_region_ran{false};
std::atomic<bool> g_pool_unusable{false};
// Threads (the caller included) in the calling thread's OpenMP pool. libgomp
// keeps one pool per thread that opens regions and retires workers when a
// region is smaller, so every region here opens with the whole pool.
thread_local int tl_pool = 1;
// A pool size the probe refused on this thread, valid until set_num_threads runs again.
std::atomic<unsigned> g_settings{0};
thread_local int tl_denied = 0;
thread_local unsigned tl_denied_settings = 0;
thread_local int tl_touched = 0;  // written by new workers to allocate their thread-local block

void on_fork_child() {
    if (g_region_ran.load(std::memory_order_relaxed)) g_pool_unusable.store(true, std::memory_order_relaxed);
}

// Registered once, when the extension module is loaded.
const int g_atfork_registered = pthread_atfork(nullptr, nullptr, &on_fork_child);

int default_threads() {
#ifdef STRIATE_HAVE_OPENMP
    int n = omp_get_max_threads();
    if (n < 1) n = 1;
    return n > kMaxThreads ? kMaxThreads : n;
#else
    return 1;
#endif
}

// The worker stack size libgomp uses: OMP_STACKSIZE or GOMP_STACKSIZE (a number
// with an optional B/K/M/G suffix, K by default), else the pthread default (0).
size_t openmp_stack_size() {
    for (const char* var : {"OMP_STACKSIZE", "GOMP_STACKSIZE"}) {
        const char* raw = std::getenv(var);
        if (!raw || !*raw) continue;
        char* end = nullptr;
        errno = 0;
        const unsigned long long v = std::strtoull(raw, &end, 10);
        if (errno || end == raw) continue;
        while (std::isspace(static_cast<unsigned char>(*end))) ++end;
        unsigned long long unit = 1024;
        switch (std::tolower(static_cast<unsigned char>(*end))) {
            case 'b': unit = 1; break;
            case 'k': unit = 1024; break;
            case 'm': unit = 1024ull * 1024; break;
            case 'g': unit = 1024ull * 1024 * 1024; break;
            case '\0': break;
            default: continue;
        }
        if (v > ~0ull / unit) continue;
        return static_cast<size_t>(v * unit);
    }
    return 0;
}

constexpr size_t kArenaReserve = size_t{128} << 20;

// Creates up to `k` threads that stay alive together (as a region's workers
// would), then releases and joins them. Returns how many could be created;
// *err gets the pthread_create error of the first failure.
int probe_threads(int k, int* err) {
    struct Gate {
        std::mutex m;
        std::condition_variable cv;
        bool open = false;
        std::atomic<int> no_memory{0};
    } gate;
    // Like a new worker, each probe thread takes a malloc arena (glibc keeps
    // arenas for the next threads) and a small block, the size of a
    // thread-local block; a failure there counts as a thread that could not start.
    auto body = [](void* p) -> void* {
        Gate* g = static_cast<Gate*>(p);
        void* volatile block = std::malloc(4096);
        if (!block) g->no_memory.fetch_add(1);
        std::free(block);
        std::unique_lock<std::mutex> lock(g->m);
        g->cv.wait(lock, [g] { return g->open; });
        return nullptr;
    };
    // Held while the threads start: the address space a new worker's malloc
    // arena takes (glibc maps 128 MiB, then keeps 64), which the probe threads
    // themselves may not have needed.
    void* reserve = mmap(nullptr, kArenaReserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (reserve == MAP_FAILED) {
        *err = ENOMEM;
        return 0;
    }
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0) {
        munmap(reserve, kArenaReserve);
        *err = EAGAIN;
        return 0;
    }
    const size_t stack = openmp_stack_size();
    if (stack) pthread_attr_setstacksize(&attr, stack);
    std::vector<pthread_t> made;
    made.reserve(static_cast<size_t>(k));
    *err = 0;
    for (int i = 0; i < k; ++i) {
        pthread_t t;
        const int rc = pthread_create(&t, &attr, body, &gate);
        if (rc != 0) {
            *err = rc;
            break;
        }
        made.push_back(t);
    }
    pthread_attr_destroy(&attr);
    {
        std::lock_guard<std::mutex> lock(gate.m);
        gate.open = true;
    }
    gate.cv.notify_all();
    for (pthread_t t : made) pthread_join(t, nullptr);
    munmap(reserve, kArenaReserve);
    const int short_of_memory = gate.no_memory.load();
    if (short_of_memory > 0 && *err == 0) *err = ENOMEM;
    return static_cast<int>(made.size()) - short_of_memory;
}

// Probe threads beyond the ones a region needs: what they leave unused (their
// stacks) is the memory the new workers' first thread-local and malloc use needs.
constexpr int kHeadroomThreads = 2;

// Grows the calling thread's pool towards `nt` threads: probes, then opens one
// region of the size the probe allows, in which each worker touches its
// thread-local block (the one allocation glibc cannot report and aborts on),
// so that later regions of at most that size create nothing.
void grow_pool(int nt) {
    int err = 0;
    const int extra = nt - tl_pool;
    const int made = probe_threads(extra + kHeadroomThreads, &err);
    int usable = made - kHeadroomThreads;
    if (usable > extra) usable = extra;
    if (usable < extra) {  // do not probe again for this size until the settings change
        tl_denied = nt;
        tl_denied_settings = g_settings.load(std::memory_order_relaxed);
    }
    if (usable <= 0) return;
    const int team = tl_pool + usable;
#ifdef STRIATE_HAVE_OPENMP
#pragma omp parallel num_threads(team)
    { tl_touched = 1; }
#endif
    tl_pool = team;
}
}  // namespace

bool openmp_usable() { return !g_pool_unusable.load(std::memory_order_relaxed); }

int get_num_threads() {
    if (!openmp_usable()) return 1;
    int n = g_num_threads.load(std::memory_order_relaxed);
    return n > 0 ? n : default_threads();
}

int plan_team(int nt, int threads) {
    if (!openmp_usable()) return 1;
    int want = get_num_threads();
    if (threads > want) want = threads;
    if (nt > want) want = nt;
    if (want > kMaxThreads) want = kMaxThreads;
    g_region_ran.store(true, std::memory_order_relaxed);
    if (want > tl_pool) {
        if (want != tl_denied || tl_denied_settings != g_settings.load(std::memory_order_relaxed)) grow_pool(want);
    } else if (want < tl_pool) {
        tl_pool = want;  // libgomp retires the surplus workers at the next region; nothing is created
    }
    return tl_pool;
}

void set_num_threads(int64_t n) {
    (void)g_atfork_registered;
    if (n < 1 || n > kMaxThreads) {
        throw std::invalid_argument("`n` (number of threads) must be between 1 and " + std::to_string(kMaxThreads) +
                                    ", got " + std::to_string(n));
    }
    const int want = static_cast<int>(n);
#ifdef STRIATE_HAVE_OPENMP
    if (openmp_usable() && want > tl_pool) {
        int err = 0;
        const int made = probe_threads(want - tl_pool + kHeadroomThreads, &err);
        if (made < want - tl_pool + kHeadroomThreads) {
            throw std::runtime_error("cannot run " + std::to_string(want) + " threads: only " +
                                     std::to_string(tl_pool + made) + " could be started, with a margin of " +
                                     std::to_string(kHeadroomThreads) + " (" + std::strerror(err) +
                                     "); the thread count stays " + std::to_string(get_num_threads()));
        }
    }
#endif
    g_num_threads.store(want, std::memory_order_relaxed);
    g_settings.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace striate
