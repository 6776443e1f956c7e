// cpu.cpp: CPU feature detection and the process-wide ISA path (see cpu.hpp).
#include "cpu.hpp"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace striate {

namespace {

Isa detect() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    const bool fma = __builtin_cpu_supports("fma");
    if (fma && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        return Isa::avx512;
    if (fma && __builtin_cpu_supports("avx2")) return Isa::avx2;
#endif
    return Isa::generic;
}

// -1: not initialised yet (STRIATE_ISA is read at the first active_isa()).
std::atomic<int> g_active{-1};

int initial_isa() {
    const Isa det = detected_isa();
    const char* env = std::getenv("STRIATE_ISA");
    if (env == nullptr || *env == '\0') return static_cast<int>(det);
    // An unknown or unsupported name in the environment falls back to the
    // detected path here; striate._config validates STRIATE_ISA at import and
    // raises ValueError naming the variable.
    try {
        const Isa want = parse_isa(env);
        if (static_cast<int>(want) <= static_cast<int>(det)) return static_cast<int>(want);
    } catch (const std::invalid_argument&) {
    }
    return static_cast<int>(det);
}

}  // namespace

Isa detected_isa() {
    static const Isa isa = detect();
    return isa;
}

Isa active_isa() {
    int v = g_active.load(std::memory_order_relaxed);
    if (v < 0) {
        int expected = -1;
        const int init = initial_isa();
        g_active.compare_exchange_strong(expected, init, std::memory_order_relaxed);
        v = g_active.load(std::memory_order_relaxed);
    }
    return static_cast<Isa>(v);
}

void set_isa(Isa isa) {
    if (static_cast<int>(isa) > static_cast<int>(detected_isa())) {
        throw std::invalid_argument(std::string("`isa` '") + isa_name(isa) +
                                    "' is not supported by this CPU (widest supported: '" +
                                    isa_name(detected_isa()) + "')");
    }
    g_active.store(static_cast<int>(isa), std::memory_order_relaxed);
}

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::avx512:
            return "avx512";
        case Isa::avx2:
            return "avx2";
        default:
            return "generic";
    }
}

Isa parse_isa(const std::string& name) {
    if (name == "avx512") return Isa::avx512;
    if (name == "avx2") return Isa::avx2;
    if (name == "generic") return Isa::generic;
    throw std::invalid_argument("`isa` must be one of 'avx512', 'avx2', 'generic', got '" + name + "'");
}

}  // namespace striate
