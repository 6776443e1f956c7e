// optim.cpp: the fused optimizer updates and the finite check (optim.hpp).
//
// Each update is one plain loop over the elements that the compiler vectorises
// for the baseline ISA: the updates move 20 to 36 bytes per element and are
// bound by memory, not by the vector width. The operations are those of the
// NumPy code in optim/optimizers.py, in its order, with its operands in its
// order; the comments give the NumPy statement each line stands for. The
// options become template flags, so that each loop is branch-free.
//
// This file is compiled with -ffp-contract=off (CMakeLists.txt): a multiply
// followed by an add must round twice, as NumPy's two passes do.
//
// Arrays of fewer than kSerial elements are updated on the calling thread (a
// parallel region costs more than the work); larger ones are cut into blocks
// of kBlock elements spread over the threads. (SGD with momentum on the
// 51,200 weights of a 32 -> 64 5x5 layer, 2 threads, Zen 4: 18.5 us on one
// thread under the former limit of 65,536, 15.3 us split; 10,240 and 20,000
// elements 1.01-1.03x, 3.2 million 1.00x.)
//
// Not here: argument checks (bind_optim.cpp).
#include "optim.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "parallel.hpp"

namespace striate {

namespace {

constexpr int64_t kBlock = 8192;
constexpr int64_t kSerial = 16384;

template <class F>
void blocks(int64_t n, F&& f) {
    if (n <= 0) return;
    if (n < kSerial) {
        f(int64_t{0}, n);
        return;
    }
    parallel_for((n + kBlock - 1) / kBlock, [&](int64_t b) {
        const int64_t lo = b * kBlock;
        f(lo, std::min(n, lo + kBlock));
    });
}

// f(std::true_type{}) or f(std::false_type{}): a runtime flag as a template flag.
template <class F>
void with_flag(bool b, F&& f) {
    if (b) {
        f(std::true_type{});
    } else {
        f(std::false_type{});
    }
}

enum class Momentum { none, first, plain, damped };

// The loops take their scalars by value and their arrays as restrict pointers,
// and are kept out of line: scalars read through the lambdas' references
// could alias the stores (they are T too), and the compiler would then leave
// the loop scalar. p + lo for a null pointer would be undefined: `at` keeps it null.
template <class T>
T* at(T* a, int64_t lo) {
    return a == nullptr ? nullptr : a + lo;
}

template <class T, bool Decay, Momentum M, bool Nesterov>
__attribute__((noinline)) void sgd_range(T* __restrict__ p, const T* __restrict__ grad, T* __restrict__ buf,
                                         int64_t n, T lr, T wd, T m, T damp) {
    for (int64_t i = 0; i < n; ++i) {
        T g = grad[i];
        if constexpr (Decay) g = grad[i] + p[i] * wd;  // _decayed: np.multiply(p, wd); np.add(grad, .)
        if constexpr (M != Momentum::none) {
            T b;
            if constexpr (M == Momentum::first) {
                b = g;  // buf = np.array(g, copy=True)
            } else if constexpr (M == Momentum::plain) {
                b = buf[i] * m;  // buf *= m
                b = b + g;       // buf += g
            } else {
                b = buf[i] * m;    // buf *= m
                b = b + g * damp;  // np.multiply(g, 1 - dampening); buf += .
            }
            buf[i] = b;
            if constexpr (Nesterov) {
                g = g + b * m;  // np.multiply(buf, m); np.add(g, .)
            } else {
                g = b;
            }
        }
        p[i] = p[i] - g * lr;  // np.multiply(g, lr); p -= .
    }
}

template <class T, bool Decay, Momentum M, bool Nesterov>
void sgd_loop(T* p, const T* grad, T* buf, int64_t n, const SgdScalars& s) {
    const T lr = static_cast<T>(s.lr), wd = static_cast<T>(s.weight_decay), m = static_cast<T>(s.momentum),
            damp = static_cast<T>(s.dampening);
    blocks(n, [&](int64_t lo, int64_t hi) {
        sgd_range<T, Decay, M, Nesterov>(p + lo, grad + lo, at(buf, lo), hi - lo, lr, wd, m, damp);
    });
}

template <class T, bool Decay, bool Decoupled>
__attribute__((noinline)) void adam_range(T* __restrict__ p, const T* __restrict__ grad, T* __restrict__ exp_avg,
                                          T* __restrict__ exp_avg_sq, int64_t n, T step_size, T wd, T keep, T c1,
                                          T b2, T c2, T bc2, T eps) {
    for (int64_t i = 0; i < n; ++i) {
        T x = p[i];
        T g = grad[i];
        if constexpr (Decoupled) {
            x = x * keep;  // p.data *= 1 - lr * wd
        } else if constexpr (Decay) {
            g = g + x * wd;  // _decayed
        }
        T m = exp_avg[i];
        m = m + (g - m) * c1;  // np.subtract(g, m); . *= 1 - b1; m += .
        exp_avg[i] = m;
        T v = exp_avg_sq[i] * b2;  // v *= b2
        v = v + (g * g) * c2;      // np.multiply(g, g); . *= 1 - b2; v += .
        exp_avg_sq[i] = v;
        T denom = std::sqrt(v);  // np.sqrt(v)
        denom = denom / bc2;     // denom /= sqrt(1 - b2**t)
        denom = denom + eps;     // denom += eps
        const T step = (m / denom) * step_size;  // np.divide(m, denom); . *= lr / (1 - b1**t)
        p[i] = x - step;                         // p -= step
    }
}

template <class T, bool Decay, bool Decoupled>
void adam_loop(T* p, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t n, const AdamScalars& s) {
    const T step_size = static_cast<T>(s.step_size), wd = static_cast<T>(s.weight_decay),
            keep = static_cast<T>(s.decoupled), c1 = static_cast<T>(s.one_minus_beta1), b2 = static_cast<T>(s.beta2),
            c2 = static_cast<T>(s.one_minus_beta2), bc2 = static_cast<T>(s.bias_correction2),
            eps = static_cast<T>(s.eps);
    blocks(n, [&](int64_t lo, int64_t hi) {
        adam_range<T, Decay, Decoupled>(p + lo, grad + lo, exp_avg + lo, exp_avg_sq + lo, hi - lo, step_size, wd,
                                        keep, c1, b2, c2, bc2, eps);
    });
}

template <class T, bool Decay, bool Centered, bool Mom>
__attribute__((noinline)) void rmsprop_range(T* __restrict__ p, const T* __restrict__ grad,
                                             T* __restrict__ square_avg, T* __restrict__ grad_avg,
                                             T* __restrict__ buf, int64_t n, T lr, T a, T c, T eps, T wd, T m) {
    for (int64_t i = 0; i < n; ++i) {
        T g = grad[i];
        if constexpr (Decay) g = grad[i] + p[i] * wd;  // _decayed
        T sq = square_avg[i] * a;                       // sq *= alpha
        sq = sq + (g * g) * c;                          // np.multiply(g, g); . *= 1 - alpha; sq += .
        square_avg[i] = sq;
        T avg;
        if constexpr (Centered) {
            T ga = grad_avg[i];
            ga = ga + (g - ga) * c;  // np.subtract(g, ga); . *= 1 - alpha; ga += .
            grad_avg[i] = ga;
            avg = std::sqrt(sq - ga * ga);  // np.multiply(ga, ga); np.subtract(sq, .); np.sqrt (NaN below 0)
        } else {
            avg = std::sqrt(sq);  // np.sqrt(sq)
        }
        avg = avg + eps;   // avg += eps
        T step = g / avg;  // np.divide(g, avg)
        if constexpr (Mom) {
            T b = buf[i] * m;  // buf *= momentum
            b = b + step;      // buf += step
            buf[i] = b;
            step = b * lr;  // np.multiply(buf, lr)
        } else {
            step = step * lr;  // step *= lr
        }
        p[i] = p[i] - step;  // p -= step
    }
}

template <class T, bool Decay, bool Centered, bool Mom>
void rmsprop_loop(T* p, const T* grad, T* square_avg, T* grad_avg, T* buf, int64_t n, const RmspropScalars& s) {
    const T lr = static_cast<T>(s.lr), a = static_cast<T>(s.alpha), c = static_cast<T>(s.one_minus_alpha),
            eps = static_cast<T>(s.eps), wd = static_cast<T>(s.weight_decay), m = static_cast<T>(s.momentum);
    blocks(n, [&](int64_t lo, int64_t hi) {
        rmsprop_range<T, Decay, Centered, Mom>(p + lo, grad + lo, square_avg + lo, at(grad_avg, lo), at(buf, lo),
                                               hi - lo, lr, a, c, eps, wd, m);
    });
}

// The exponent bits of T, and an unsigned integer of its size.
template <class T>
struct FloatBits;
template <>
struct FloatBits<float> {
    using U = uint32_t;
    static constexpr U exponent = 0x7F800000u;
};
template <>
struct FloatBits<double> {
    using U = uint64_t;
    static constexpr U exponent = 0x7FF0000000000000ull;
};

// Whether a[lo, hi) holds no infinity or NaN (all exponent bits set), in
// pieces of 2048 elements, stopping at the first piece with one.
template <class T>
bool range_finite(const T* a, int64_t lo, int64_t hi) {
    using U = typename FloatBits<T>::U;
    constexpr U e = FloatBits<T>::exponent;
    for (int64_t i = lo; i < hi; i += 2048) {
        const int64_t end = std::min(hi, i + 2048);
        U bad = 0;
        for (int64_t j = i; j < end; ++j) {
            U u;
            std::memcpy(&u, a + j, sizeof u);
            bad |= static_cast<U>((u & e) == e);
        }
        if (bad) return false;
    }
    return true;
}

}  // namespace

template <class T>
void sgd_update(T* p, const T* grad, T* buf, int64_t n, const SgdScalars& s) {
    with_flag(s.decay, [&](auto decay) {
        with_flag(s.nesterov, [&](auto nesterov) {
            constexpr bool D = decltype(decay)::value, N = decltype(nesterov)::value;
            if (buf == nullptr) {
                sgd_loop<T, D, Momentum::none, false>(p, grad, buf, n, s);
            } else if (s.first) {
                sgd_loop<T, D, Momentum::first, N>(p, grad, buf, n, s);
            } else if (s.damp) {
                sgd_loop<T, D, Momentum::damped, N>(p, grad, buf, n, s);
            } else {
                sgd_loop<T, D, Momentum::plain, N>(p, grad, buf, n, s);
            }
        });
    });
}

template <class T>
void adam_update(T* p, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t n, const AdamScalars& s) {
    if (s.decoupled_decay) {
        adam_loop<T, false, true>(p, grad, exp_avg, exp_avg_sq, n, s);
    } else if (s.decay) {
        adam_loop<T, true, false>(p, grad, exp_avg, exp_avg_sq, n, s);
    } else {
        adam_loop<T, false, false>(p, grad, exp_avg, exp_avg_sq, n, s);
    }
}

template <class T>
void rmsprop_update(T* p, const T* grad, T* square_avg, T* grad_avg, T* buf, int64_t n, const RmspropScalars& s) {
    with_flag(s.decay, [&](auto decay) {
        with_flag(grad_avg != nullptr, [&](auto centered) {
            with_flag(buf != nullptr, [&](auto mom) {
                rmsprop_loop<T, decltype(decay)::value, decltype(centered)::value, decltype(mom)::value>(
                    p, grad, square_avg, grad_avg, buf, n, s);
            });
        });
    });
}

template <class T>
bool all_finite(const T* a, int64_t n) {
    if (n < kSerial) return range_finite(a, 0, n);
    std::atomic<bool> found{false};
    parallel_for((n + kBlock - 1) / kBlock, [&](int64_t b) {
        if (found.load(std::memory_order_relaxed)) return;
        const int64_t lo = b * kBlock;
        if (!range_finite(a, lo, std::min(n, lo + kBlock))) found.store(true, std::memory_order_relaxed);
    });
    return !found.load();
}

template void sgd_update<float>(float*, const float*, float*, int64_t, const SgdScalars&);
template void sgd_update<double>(double*, const double*, double*, int64_t, const SgdScalars&);
template void adam_update<float>(float*, const float*, float*, float*, int64_t, const AdamScalars&);
template void adam_update<double>(double*, const double*, double*, double*, int64_t, const AdamScalars&);
template void rmsprop_update<float>(float*, const float*, float*, float*, float*, int64_t, const RmspropScalars&);
template void rmsprop_update<double>(double*, const double*, double*, double*, double*, int64_t,
                                     const RmspropScalars&);
template bool all_finite<float>(const float*, int64_t);
template bool all_finite<double>(const double*, int64_t);

}  // namespace striate
