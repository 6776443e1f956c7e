// augment.cpp: the augmentation kernels declared in augment.hpp.
//
// Each kernel loops over samples with parallel_for; a sample is processed by one
// thread from start to end, with the same arithmetic whatever the thread count.
// Arguments are trusted here: bind_augment.cpp has checked shapes and ranges.
// The affine warp has one compiled copy per instruction-set path and runs the
// one of active_isa() (cpu.hpp); flip, crop and grayscale are plain copies and
// arithmetic compiled once for the baseline.
//
// dropout_mask is the counter-based keep mask of the Dropout layer.
//
// Not here: argument checks, random parameter drawing, any Python object.
#include "augment.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu.hpp"
#include "parallel.hpp"

namespace striate {

namespace {

// cos and sin of an angle in degrees, exact at multiples of 90 degrees so that
// quarter turns move pixels without interpolation error.
void cos_sin_deg(double deg, double& c, double& s) {
    double r = std::fmod(deg, 360.0);
    if (r < 0) r += 360.0;
    if (r == 0.0) { c = 1.0; s = 0.0; return; }
    if (r == 90.0) { c = 0.0; s = 1.0; return; }
    if (r == 180.0) { c = -1.0; s = 0.0; return; }
    if (r == 270.0) { c = 0.0; s = -1.0; return; }
    const double rad = deg * (3.14159265358979323846 / 180.0);
    c = std::cos(rad);
    s = std::sin(rad);
}

#if defined(__GNUC__) && defined(__x86_64__)
#define STRIATE_AUGMENT_X86 1
#else
#define STRIATE_AUGMENT_X86 0
#endif

// Fill border around the image in the scratch plane: 2 pixels before, 3 after,
// so that every clamped tap of affine_sample lands inside the plane.
constexpr int64_t kPadLo = 2, kPadHi = 3;

// One sample of affine_forward: x and y point at (C, H, W) planes.
//
// The sample is first copied into a scratch plane with a border of `fill`
// (kPadLo before, kPadHi after), which is the same as reading `fill` for every
// tap outside the image. Source coordinates are clamped to [-2, W+1] x [-2, H+1]
// (any coordinate beyond reads only fill there), so the inner loops have no
// branches: per output row, one loop computes tap offsets and fractions, then one
// loop per channel gathers and interpolates:
//   top = p00 + ax (p01 - p00), bot = p10 + ax (p11 - p10), out = top + ay (bot - top).
// With ax = ay = 0 the result is p00 exactly (identity, whole-pixel shifts).
//
// The body is compiled three times (affine_sample_<isa> below) and the copy
// of active_isa() runs; the AVX2 and AVX-512 copies may contract the
// interpolation into FMAs, the generic one cannot.
inline __attribute__((always_inline)) void affine_sample_body(const float* x, float* y, int64_t C, int64_t H,
                                                               int64_t W, double angle_deg, double tx, double ty,
                                                               double scale, float fill) {
    double c, s;
    cos_sin_deg(angle_deg, c, s);
    // Inverse of the counter-clockwise rotation (y down) divided by the scale:
    //   x_in = cx + ( c*u - s*v) / scale,  y_in = cy + (s*u + c*v) / scale,
    // with (u, v) = (x_out - cx - tx, y_out - cy - ty).
    const double m00 = c / scale, m01 = -s / scale, m10 = s / scale, m11 = c / scale;
    const double cx = 0.5 * static_cast<double>(W - 1), cy = 0.5 * static_cast<double>(H - 1);
    const int64_t Wp = W + kPadLo + kPadHi, Hp = H + kPadLo + kPadHi;
    const double xmax = static_cast<double>(W + 1), ymax = static_cast<double>(H + 1);

    thread_local std::vector<float> scratch;
    thread_local std::vector<int32_t> offs;
    thread_local std::vector<float> fxs, fys;
    scratch.assign(static_cast<size_t>(C * Hp * Wp), fill);
    offs.resize(static_cast<size_t>(W));
    fxs.resize(static_cast<size_t>(W));
    fys.resize(static_cast<size_t>(W));
    for (int64_t ch = 0; ch < C; ++ch) {
        for (int64_t r = 0; r < H; ++r) {
            std::memcpy(&scratch[static_cast<size_t>((ch * Hp + r + kPadLo) * Wp + kPadLo)], x + (ch * H + r) * W,
                        static_cast<size_t>(W) * sizeof(float));
        }
    }
    const float* P = scratch.data();
    int32_t* off = offs.data();
    float* fx = fxs.data();
    float* fy = fys.data();
    const int32_t wp32 = static_cast<int32_t>(Wp);
    const int64_t hw = H * W, plane = Hp * Wp;
    for (int64_t oy = 0; oy < H; ++oy) {
        const double v = static_cast<double>(oy) - cy - ty;
        const double bx = cx + m01 * v, by = cy + m11 * v;
        for (int64_t ox = 0; ox < W; ++ox) {
            const double u = static_cast<double>(ox) - cx - tx;
            double xi = bx + m00 * u, yi = by + m10 * u;
            // Clamp (NaN goes to the low end): beyond the clamp every tap reads fill.
            xi = xi > -2.0 ? xi : -2.0;
            xi = xi < xmax ? xi : xmax;
            yi = yi > -2.0 ? yi : -2.0;
            yi = yi < ymax ? yi : ymax;
            // Scratch coordinates are >= 0, so truncation is floor.
            const double xs = xi + static_cast<double>(kPadLo), ys = yi + static_cast<double>(kPadLo);
            const int32_t x0 = static_cast<int32_t>(xs), y0 = static_cast<int32_t>(ys);
            fx[ox] = static_cast<float>(xs - static_cast<double>(x0));
            fy[ox] = static_cast<float>(ys - static_cast<double>(y0));
            off[ox] = y0 * wp32 + x0;
        }
        for (int64_t ch = 0; ch < C; ++ch) {
            const float* p = P + ch * plane;
            float* out = y + ch * hw + oy * W;
            for (int64_t ox = 0; ox < W; ++ox) {
                const int32_t o = off[ox];
                const float p00 = p[o], p01 = p[o + 1], p10 = p[o + wp32], p11 = p[o + wp32 + 1];
                const float top = p00 + fx[ox] * (p01 - p00);
                const float bot = p10 + fx[ox] * (p11 - p10);
                out[ox] = top + fy[ox] * (bot - top);
            }
        }
    }
}

using affine_sample_fn = void (*)(const float*, float*, int64_t, int64_t, int64_t, double, double, double, double,
                                  float);

void affine_sample_generic(const float* x, float* y, int64_t C, int64_t H, int64_t W, double angle_deg, double tx,
                           double ty, double scale, float fill) {
    affine_sample_body(x, y, C, H, W, angle_deg, tx, ty, scale, fill);
}

#if STRIATE_AUGMENT_X86
__attribute__((target("arch=x86-64-v3"))) void affine_sample_avx2(const float* x, float* y, int64_t C, int64_t H,
                                                                  int64_t W, double angle_deg, double tx, double ty,
                                                                  double scale, float fill) {
    affine_sample_body(x, y, C, H, W, angle_deg, tx, ty, scale, fill);
}

__attribute__((target("arch=x86-64-v4"))) void affine_sample_avx512(const float* x, float* y, int64_t C, int64_t H,
                                                                    int64_t W, double angle_deg, double tx,
                                                                    double ty, double scale, float fill) {
    affine_sample_body(x, y, C, H, W, angle_deg, tx, ty, scale, fill);
}
#endif

affine_sample_fn pick_affine_sample() {
#if STRIATE_AUGMENT_X86
    switch (active_isa()) {
        case Isa::avx512:
            return affine_sample_avx512;
        case Isa::avx2:
            return affine_sample_avx2;
        default:
            break;
    }
#endif
    return affine_sample_generic;
}

inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

}  // namespace

void affine_forward(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W,
                    const double* angle_deg, const double* tx, const double* ty, const double* scale,
                    float fill, int threads) {
    const int64_t per = C * H * W;
    const affine_sample_fn affine_sample = pick_affine_sample();
    parallel_for(
        N,
        [&](int64_t n) {
            affine_sample(x + n * per, y + n * per, C, H, W, angle_deg[n], tx[n], ty[n], scale[n], fill);
        },
        threads);
}

void hflip_forward(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W,
                   const uint8_t* flags, int threads) {
    const int64_t per = C * H * W;
    parallel_for(
        N,
        [&](int64_t n) {
            const float* xs = x + n * per;
            float* ys = y + n * per;
            if (flags && !flags[n]) {
                std::memcpy(ys, xs, static_cast<size_t>(per) * sizeof(float));
                return;
            }
            for (int64_t r = 0; r < C * H; ++r) {
                const float* src = xs + r * W;
                float* dst = ys + r * W;
                for (int64_t j = 0; j < W; ++j) dst[j] = src[W - 1 - j];
            }
        },
        threads);
}

void crop_forward(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W,
                  const int64_t* top, const int64_t* left, int64_t out_h, int64_t out_w, int64_t padding,
                  float fill, int threads) {
    const int64_t per_in = C * H * W, per_out = C * out_h * out_w;
    parallel_for(
        N,
        [&](int64_t n) {
            // Window origin in input coordinates (may be negative inside the padding).
            const int64_t r0 = top[n] - padding, c0 = left[n] - padding;
            // Output columns [j_lo, j_hi) read the input; the others are fill.
            const int64_t j_lo = std::min(out_w, std::max<int64_t>(0, -c0));
            const int64_t j_hi = std::max(j_lo, std::min(out_w, W - c0));
            for (int64_t ch = 0; ch < C; ++ch) {
                const float* xs = x + n * per_in + ch * H * W;
                float* ys = y + n * per_out + ch * out_h * out_w;
                for (int64_t i = 0; i < out_h; ++i) {
                    float* dst = ys + i * out_w;
                    const int64_t r = r0 + i;
                    if (r < 0 || r >= H) {
                        std::fill(dst, dst + out_w, fill);
                        continue;
                    }
                    std::fill(dst, dst + j_lo, fill);
                    if (j_hi > j_lo) {
                        std::memcpy(dst + j_lo, xs + r * W + c0 + j_lo, static_cast<size_t>(j_hi - j_lo) * sizeof(float));
                    }
                    std::fill(dst + j_hi, dst + out_w, fill);
                }
            }
        },
        threads);
}

void grayscale_forward(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t out_c,
                       int threads) {
    const int64_t hw = H * W;
    parallel_for(
        N,
        [&](int64_t n) {
            const float* xs = x + n * C * hw;
            float* ys = y + n * out_c * hw;
            if (C == 3) {
                const float *r = xs, *g = xs + hw, *b = xs + 2 * hw;
                for (int64_t i = 0; i < hw; ++i) ys[i] = 0.299f * r[i] + 0.587f * g[i] + 0.114f * b[i];
            } else {
                std::memcpy(ys, xs, static_cast<size_t>(hw) * sizeof(float));
            }
            for (int64_t ch = 1; ch < out_c; ++ch) {
                std::memcpy(ys + ch * hw, ys, static_cast<size_t>(hw) * sizeof(float));
            }
        },
        threads);
}

void uniform_stream(uint64_t key, int64_t start, int64_t n, int64_t k, double* out) {
    for (int64_t i = 0; i < n; ++i) {
        const uint64_t sample = static_cast<uint64_t>(start + i);
        const uint64_t ks = mix64(key ^ mix64(sample * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL));
        for (int64_t j = 0; j < k; ++j) {
            const uint64_t h = mix64(ks + static_cast<uint64_t>(j + 1) * 0xD1B54A32D192ED03ULL);
            out[i * k + j] = static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);
        }
    }
}

namespace {
// T's bits: uint32_t for float, uint64_t for double.
template <class T>
using BitsOf = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;

template <class T>
void dropout_mask_t(uint64_t key, int64_t n, uint64_t threshold, T scale, T* out, int threads) {
    using Bits = BitsOf<T>;
    Bits sbits;
    std::memcpy(&sbits, &scale, sizeof(T));
    // Branch-free: the bits of scale or of +0 through an all-ones or all-zeros
    // mask (a kept element is a coin flip, so a branch on it, or a compare the
    // compiler turns into one, is mispredicted half the time: 3x slower).
    auto value = [sbits](uint64_t number, uint64_t threshold) {
        const Bits m = static_cast<Bits>(0) - static_cast<Bits>(number >= threshold);
        const Bits b = m & sbits;
        T v;
        std::memcpy(&v, &b, sizeof(T));
        return v;
    };
    // Blocks of 2^14 elements (8192 numbers) per task: whole pairs, so each
    // task starts on an even element.
    constexpr int64_t kBlock = int64_t(1) << 14;
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    parallel_for(
        blocks,
        [&](int64_t b) {
            const int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
            auto number = [key](int64_t j) { return mix64(key + static_cast<uint64_t>(j + 1) * 0x9E3779B97F4A7C15ULL); };
            int64_t i = lo;
            for (; i + 2 <= hi; i += 2) {
                const uint64_t z = number(i / 2);
                out[i] = value(z & 0xFFFFFFFFULL, threshold);
                out[i + 1] = value(z >> 32, threshold);
            }
            if (i < hi) out[i] = value(number(i / 2) & 0xFFFFFFFFULL, threshold);
        },
        n >= 4 * kBlock ? threads : 1);
}
}  // namespace

void dropout_mask(uint64_t key, int64_t n, uint64_t threshold, float scale, float* out, int threads) {
    dropout_mask_t(key, n, threshold, scale, out, threads);
}
void dropout_mask(uint64_t key, int64_t n, uint64_t threshold, double scale, double* out, int threads) {
    dropout_mask_t(key, n, threshold, scale, out, threads);
}

}  // namespace striate
