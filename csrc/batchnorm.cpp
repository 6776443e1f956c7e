// batchnorm.cpp: the batch normalisation kernels declared in batchnorm.hpp,
// forward beside backward.
//
// Work split. Channel c's N*HW values, in the order k = n*HW + hw, may be cut
// into P contiguous pieces, P fixed by the shape alone (pieces_per_channel).
// With P = 1 (C >= 16, the usual case) each thread takes one block of whole
// channels and runs every pass of the op over it (statistics, then the element
// pass) walking memory in order, image by image, so that it streams runs of
// (channels in the block) * HW floats instead of jumping by a C*HW stride
// after every plane (measured twice as fast for 64x16x32x32). With P > 1 (few
// channels, which would leave threads idle) the items are (channel, piece),
// the sums, the statistics and the element pass are separate parallel
// regions, and the pieces' partial sums are added per channel in piece order.
// Which channels share a block never changes a channel's arithmetic, and the
// pieces depend on the shape only, so results are bit-identical for any thread
// count.
//
// Sums: a channel (or piece) accumulates into 16 float64 lanes, the value at
// plane position hw going to lane hw % 16 in increasing k; the lanes are added
// by one fixed tree (batchnorm_loops.hpp). The training forward is two-pass
// (the mean, then the sum of squared float64 deviations from it), so a large
// mean costs no accuracy. The lanes are intrinsics per path (GenericLanes,
// Avx2Lanes, Avx512Lanes below, the same IEEE double operations lane by
// lane); the element loops are plain loops the compiler vectorises; both are
// compiled once per ISA path (batchnorm_loops.hpp) and picked from
// active_isa() (cpu.hpp). The file is compiled with -ffp-contract=off
// (CMakeLists.txt): no path fuses a multiply and an add, so every path gives
// the same bits.
//
// Element formulas (float32 unless said otherwise; m = float(mean)):
//   forward:          y  = (x - m) * a + beta,  a = float(invstd * gamma) in float64
//   apply:            y  = (x - mean) * scale + shift
//   backward, batch:  dx = ((dy - mdb) - (x - m) * b) * s,
//                     s = float(gamma*invstd), mdb = float(dbeta/n),
//                     b = float(invstd * dgamma / n), dbeta and dgamma in float64
//   backward, given statistics: dx = dy * s
//
// Not here: argument validation and allocation (bind_norm.cpp), threads
// (parallel.hpp), running statistics (python/striate/layers/normalization.py).
#include "batchnorm.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu.hpp"
#include "parallel.hpp"
#include "simd.hpp"

namespace striate {

namespace {

constexpr int kLanes = 16;
// Items wanted per call when channels are few (enough for 16 threads) ...
constexpr int64_t kPieceItems = 16;
// ... but no piece shorter than this many values: a region costs microseconds.
constexpr int64_t kMinPiece = 16384;

// P for this shape: 1 when there are at least kPieceItems channels, else
// enough pieces for kPieceItems items, each at least kMinPiece values long.
int64_t pieces_per_channel(const BnGeom& g) {
    if (g.C >= kPieceItems) return 1;
    const int64_t L = g.N * g.HW;
    const int64_t want = (kPieceItems + g.C - 1) / std::max<int64_t>(g.C, 1);
    return std::max<int64_t>(1, std::min(want, L / kMinPiece));
}

// Piece p of P over [0, L): [lo, hi), the first L % P pieces one longer.
inline void piece_range(int64_t L, int64_t P, int64_t p, int64_t& lo, int64_t& hi) {
    const int64_t q = L / P, r = L % P;
    lo = p * q + std::min(p, r);
    hi = lo + q + (p < r ? 1 : 0);
}

// ---- the 16 float64 lanes of each ISA path ----------------------------------
// D::acc holds 16 double lanes; add() widens 16 floats and adds them lane by
// lane, add_sqdev() adds (p - mean)^2, add_proddev() adds pd * (px - mean),
// store() writes the 16 lanes out. Each is the same IEEE double arithmetic per
// lane on every path (no fused multiply-add).

struct GenericLanes {
    struct acc {
        double v[kLanes];
    };
    static STRIATE_SIMD_INLINE acc zero() { return acc{}; }
    static STRIATE_SIMD_INLINE void add(acc& a, const float* p) {
        for (int l = 0; l < kLanes; ++l) a.v[l] += static_cast<double>(p[l]);
    }
    static STRIATE_SIMD_INLINE void add_sqdev(acc& a, const float* p, double mean) {
        for (int l = 0; l < kLanes; ++l) {
            const double d = static_cast<double>(p[l]) - mean;
            a.v[l] += d * d;
        }
    }
    static STRIATE_SIMD_INLINE void add_proddev(acc& a, const float* pd, const float* px, double mean) {
        for (int l = 0; l < kLanes; ++l) a.v[l] += static_cast<double>(pd[l]) * (static_cast<double>(px[l]) - mean);
    }
    static STRIATE_SIMD_INLINE void store(double* out, const acc& a) {
        for (int l = 0; l < kLanes; ++l) out[l] = a.v[l];
    }
};

#if STRIATE_SIMD_X86

// Lanes 4i..4i+3 in vi. (Named members, not an array: the compiler keeps
// them in registers only when no loop indexes them.)
struct Avx2Lanes {
    struct acc {
        __m256d v0, v1, v2, v3;
    };
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE acc zero() {
        const __m256d z = _mm256_setzero_pd();
        return acc{z, z, z, z};
    }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE __m256d load(const float* p) {
        return _mm256_cvtps_pd(_mm_loadu_ps(p));
    }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE __m256d sq(__m256d x, __m256d m) {
        const __m256d d = _mm256_sub_pd(x, m);
        return _mm256_mul_pd(d, d);
    }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE __m256d pd(__m256d a, __m256d x, __m256d m) {
        return _mm256_mul_pd(a, _mm256_sub_pd(x, m));
    }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE void add(acc& a, const float* p) {
        a.v0 = _mm256_add_pd(a.v0, load(p));
        a.v1 = _mm256_add_pd(a.v1, load(p + 4));
        a.v2 = _mm256_add_pd(a.v2, load(p + 8));
        a.v3 = _mm256_add_pd(a.v3, load(p + 12));
    }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE void add_sqdev(acc& a, const float* p, double mean) {
        const __m256d m = _mm256_set1_pd(mean);
        a.v0 = _mm256_add_pd(a.v0, sq(load(p), m));
        a.v1 = _mm256_add_pd(a.v1, sq(load(p + 4), m));
        a.v2 = _mm256_add_pd(a.v2, sq(load(p + 8), m));
        a.v3 = _mm256_add_pd(a.v3, sq(load(p + 12), m));
    }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE void add_proddev(acc& a, const float* pd_, const float* px,
                                                                    double mean) {
        const __m256d m = _mm256_set1_pd(mean);
        a.v0 = _mm256_add_pd(a.v0, pd(load(pd_), load(px), m));
        a.v1 = _mm256_add_pd(a.v1, pd(load(pd_ + 4), load(px + 4), m));
        a.v2 = _mm256_add_pd(a.v2, pd(load(pd_ + 8), load(px + 8), m));
        a.v3 = _mm256_add_pd(a.v3, pd(load(pd_ + 12), load(px + 12), m));
    }
    STRIATE_TARGET_AVX2 static STRIATE_SIMD_INLINE void store(double* out, const acc& a) {
        _mm256_storeu_pd(out, a.v0);
        _mm256_storeu_pd(out + 4, a.v1);
        _mm256_storeu_pd(out + 8, a.v2);
        _mm256_storeu_pd(out + 12, a.v3);
    }
};

// Lanes 0..7 in v0, 8..15 in v1.
struct Avx512Lanes {
    struct acc {
        __m512d v0, v1;
    };
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE acc zero() {
        const __m512d z = _mm512_setzero_pd();
        return acc{z, z};
    }
    // (The zero-masked conversion: the plain one trips a GCC 12 uninitialised warning in its header.)
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE __m512d load(const float* p) {
        return _mm512_maskz_cvtps_pd(0xFF, _mm256_loadu_ps(p));
    }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE __m512d sq(__m512d x, __m512d m) {
        const __m512d d = _mm512_sub_pd(x, m);
        return _mm512_mul_pd(d, d);
    }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE __m512d pd(__m512d a, __m512d x, __m512d m) {
        return _mm512_mul_pd(a, _mm512_sub_pd(x, m));
    }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE void add(acc& a, const float* p) {
        a.v0 = _mm512_add_pd(a.v0, load(p));
        a.v1 = _mm512_add_pd(a.v1, load(p + 8));
    }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE void add_sqdev(acc& a, const float* p, double mean) {
        const __m512d m = _mm512_set1_pd(mean);
        a.v0 = _mm512_add_pd(a.v0, sq(load(p), m));
        a.v1 = _mm512_add_pd(a.v1, sq(load(p + 8), m));
    }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE void add_proddev(acc& a, const float* pd_, const float* px,
                                                                      double mean) {
        const __m512d m = _mm512_set1_pd(mean);
        a.v0 = _mm512_add_pd(a.v0, pd(load(pd_), load(px), m));
        a.v1 = _mm512_add_pd(a.v1, pd(load(pd_ + 8), load(px + 8), m));
    }
    STRIATE_TARGET_AVX512 static STRIATE_SIMD_INLINE void store(double* out, const acc& a) {
        _mm512_storeu_pd(out, a.v0);
        _mm512_storeu_pd(out + 8, a.v1);
    }
};

#endif  // STRIATE_SIMD_X86

// ---- one set of loops per ISA path ----------------------------------------------

struct BnKit {
    void (*sums)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, double*);
    void (*sqdevs)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const double*, double*);
    void (*apply)(const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const float*,
                  const float*, const float*);
    void (*grad_sums)(const float*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const float*,
                      double*, double*);
    void (*dx_batch)(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                     const float*, const float*, const float*, const float*);
    void (*dx_scale)(const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const float*);
};

namespace generic_kit {
using D = GenericLanes;
#define STRIATE_BN_TARGET
#include "batchnorm_loops.hpp"
#undef STRIATE_BN_TARGET
}  // namespace generic_kit

#if STRIATE_SIMD_X86
namespace avx2_kit {
using D = Avx2Lanes;
#define STRIATE_BN_TARGET STRIATE_TARGET_AVX2
#include "batchnorm_loops.hpp"
#undef STRIATE_BN_TARGET
}  // namespace avx2_kit

namespace avx512_kit {
using D = Avx512Lanes;
#define STRIATE_BN_TARGET STRIATE_TARGET_AVX512
#include "batchnorm_loops.hpp"
#undef STRIATE_BN_TARGET
}  // namespace avx512_kit
#endif

const BnKit& kit() {
#if STRIATE_SIMD_X86
    switch (active_isa()) {
        case Isa::avx512:
            return avx512_kit::kKit;
        case Isa::avx2:
            return avx2_kit::kKit;
        default:
            break;
    }
#endif
    return generic_kit::kKit;
}

// Adds the P partials of each channel in piece order: part is (P, C), out (C,).
void combine(const std::vector<double>& part, int64_t C, int64_t P, double* out) {
    for (int64_t c = 0; c < C; ++c) {
        double t = part[static_cast<size_t>(c)];
        for (int64_t p = 1; p < P; ++p) t += part[static_cast<size_t>(p * C + c)];
        out[c] = t;
    }
}

// Channel blocks for P == 1: one per thread (at most C). Which channels share
// a block changes how memory is walked, never a channel's arithmetic.
int64_t channel_blocks(const BnGeom& g) { return std::min<int64_t>(g.C, get_num_threads()); }

}  // namespace

void batch_norm_forward_train(const float* x, const float* gamma, const float* beta, double eps, float* y,
                              double* mean, double* var, float* invstd, const BnGeom& g) {
    const BnKit& K = kit();
    const int64_t L = g.N * g.HW, P = pieces_per_channel(g);
    const double n = static_cast<double>(L);
    std::vector<float> ms(static_cast<size_t>(g.C)), as(static_cast<size_t>(g.C));  // (C,) m and a of y's formula
    // var[c] holds the sum of squared deviations; turn it and the sums into the statistics.
    auto finish = [&](int64_t c) {
        var[c] /= n;
        const double inv = 1.0 / std::sqrt(var[c] + eps);
        invstd[c] = static_cast<float>(inv);
        ms[static_cast<size_t>(c)] = static_cast<float>(mean[c]);
        as[static_cast<size_t>(c)] = static_cast<float>(inv * static_cast<double>(gamma[c]));
    };
    if (P == 1) {
        const int64_t nb = channel_blocks(g);
        parallel_for(nb, [&](int64_t b) {
            int64_t c0, c1;
            piece_range(g.C, nb, b, c0, c1);
            K.sums(x, g.C, g.HW, c0, c1, 0, L, mean);
            for (int64_t c = c0; c < c1; ++c) mean[c] /= n;
            K.sqdevs(x, g.C, g.HW, c0, c1, 0, L, mean, var);
            for (int64_t c = c0; c < c1; ++c) finish(c);
            K.apply(x, y, g.C, g.HW, c0, c1, 0, L, ms.data(), as.data(), beta);
        });
        return;
    }
    std::vector<double> part(static_cast<size_t>(P * g.C));  // (P, C) partial sums
    parallel_for_2d(g.C, P, [&](int64_t c, int64_t p) {
        int64_t lo, hi;
        piece_range(L, P, p, lo, hi);
        K.sums(x, g.C, g.HW, c, c + 1, lo, hi, part.data() + p * g.C);
    });
    combine(part, g.C, P, mean);
    for (int64_t c = 0; c < g.C; ++c) mean[c] /= n;
    parallel_for_2d(g.C, P, [&](int64_t c, int64_t p) {
        int64_t lo, hi;
        piece_range(L, P, p, lo, hi);
        K.sqdevs(x, g.C, g.HW, c, c + 1, lo, hi, mean, part.data() + p * g.C);
    });
    combine(part, g.C, P, var);
    for (int64_t c = 0; c < g.C; ++c) finish(c);
    parallel_for_2d(g.C, P, [&](int64_t c, int64_t p) {
        int64_t lo, hi;
        piece_range(L, P, p, lo, hi);
        K.apply(x, y, g.C, g.HW, c, c + 1, lo, hi, ms.data(), as.data(), beta);
    });
}

void batch_norm_forward_apply(const float* x, const float* mean, const float* scale, const float* shift, float* y,
                              const BnGeom& g) {
    const BnKit& K = kit();
    const int64_t L = g.N * g.HW, P = pieces_per_channel(g);
    if (P == 1) {
        const int64_t nb = channel_blocks(g);
        parallel_for(nb, [&](int64_t b) {
            int64_t c0, c1;
            piece_range(g.C, nb, b, c0, c1);
            K.apply(x, y, g.C, g.HW, c0, c1, 0, L, mean, scale, shift);
        });
        return;
    }
    parallel_for_2d(g.C, P, [&](int64_t c, int64_t p) {
        int64_t lo, hi;
        piece_range(L, P, p, lo, hi);
        K.apply(x, y, g.C, g.HW, c, c + 1, lo, hi, mean, scale, shift);
    });
}

void batch_norm_backward(const float* dy, const float* x, const float* mean, const float* invstd,
                         const float* gamma, bool batch_stats, float* dx, float* dgamma, float* dbeta,
                         const BnGeom& g) {
    const BnKit& K = kit();
    const int64_t L = g.N * g.HW, P = pieces_per_channel(g);
    const double n = static_cast<double>(L);
    const bool sums = (batch_stats && dx) || dgamma || dbeta;
    const size_t C = static_cast<size_t>(g.C);
    // (C,) float64 sums of dy and dy * (x - mean), then dx's per-channel factors.
    std::vector<double> sdy(C), sdyx(C);
    std::vector<float> s(C), mdb(C), b(C);
    auto finish = [&](int64_t c) {
        const size_t i = static_cast<size_t>(c);
        const double inv = static_cast<double>(invstd[c]);
        s[i] = static_cast<float>(static_cast<double>(gamma[c]) * inv);
        if (!sums) return;
        const double dg = sdyx[i] * inv;
        if (dbeta) dbeta[c] = static_cast<float>(sdy[i]);
        if (dgamma) dgamma[c] = static_cast<float>(dg);
        mdb[i] = static_cast<float>(sdy[i] / n);
        b[i] = static_cast<float>(inv * dg / n);
    };
    auto dx_part = [&](int64_t c0, int64_t c1, int64_t lo, int64_t hi) {
        if (batch_stats) {
            K.dx_batch(dy, x, dx, g.C, g.HW, c0, c1, lo, hi, mean, s.data(), mdb.data(), b.data());
        } else {
            K.dx_scale(dy, dx, g.C, g.HW, c0, c1, lo, hi, s.data());
        }
    };
    if (P == 1) {
        const int64_t nb = channel_blocks(g);
        parallel_for(nb, [&](int64_t blk) {
            int64_t c0, c1;
            piece_range(g.C, nb, blk, c0, c1);
            if (sums) K.grad_sums(dy, x, g.C, g.HW, c0, c1, 0, L, mean, sdy.data(), sdyx.data());
            for (int64_t c = c0; c < c1; ++c) finish(c);
            if (dx) dx_part(c0, c1, 0, L);
        });
        return;
    }
    if (sums) {
        std::vector<double> pb(static_cast<size_t>(P) * C), pg(static_cast<size_t>(P) * C);  // (P, C) each
        parallel_for_2d(g.C, P, [&](int64_t c, int64_t p) {
            int64_t lo, hi;
            piece_range(L, P, p, lo, hi);
            K.grad_sums(dy, x, g.C, g.HW, c, c + 1, lo, hi, mean, pb.data() + p * g.C, pg.data() + p * g.C);
        });
        combine(pb, g.C, P, sdy.data());
        combine(pg, g.C, P, sdyx.data());
    }
    for (int64_t c = 0; c < g.C; ++c) finish(c);
    if (dx) {
        parallel_for_2d(g.C, P, [&](int64_t c, int64_t p) {
            int64_t lo, hi;
            piece_range(L, P, p, lo, hi);
            dx_part(c, c + 1, lo, hi);
        });
    }
}

}  // namespace striate
