// augment.cpp: the augmentation kernels declared in augment.hpp.
//
// Each kernel loops over samples with parallel_for; a sample is processed by one
// thread from start to end, with the same arithmetic whatever the thread count.
// Arguments are trusted here: bind_augment.cpp has checked shapes and ranges.
//
// Not here: argument checks, random parameter drawing, any Python object.
#include "augment.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

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

// One sample of affine_forward: x and y point at (C, H, W) planes.
void affine_sample(const float* x, float* y, int64_t C, int64_t H, int64_t W, double angle_deg, double tx,
                   double ty, double scale, float fill) {
    double c, s;
    cos_sin_deg(angle_deg, c, s);
    // Inverse of the counter-clockwise rotation (y down) divided by the scale:
    //   x_in = cx + ( c*u - s*v) / scale,  y_in = cy + (s*u + c*v) / scale,
    // with (u, v) = (x_out - cx - tx, y_out - cy - ty).
    const double m00 = c / scale, m01 = -s / scale, m10 = s / scale, m11 = c / scale;
    const double cx = 0.5 * static_cast<double>(W - 1), cy = 0.5 * static_cast<double>(H - 1);
    const double wd = static_cast<double>(W), hd = static_cast<double>(H);
    const int64_t hw = H * W;
    for (int64_t oy = 0; oy < H; ++oy) {
        const double v = static_cast<double>(oy) - cy - ty;
        const double bx = cx + m01 * v, by = cy + m11 * v;
        for (int64_t ox = 0; ox < W; ++ox) {
            const double u = static_cast<double>(ox) - cx - tx;
            const double xi = bx + m00 * u, yi = by + m10 * u;
            float* out = y + oy * W + ox;
            // No tap inside the image (this also catches NaN and huge coordinates).
            if (!(xi > -1.0 && xi < wd && yi > -1.0 && yi < hd)) {
                for (int64_t ch = 0; ch < C; ++ch) out[ch * hw] = fill;
                continue;
            }
            const double fx0 = std::floor(xi), fy0 = std::floor(yi);
            const int64_t x0 = static_cast<int64_t>(fx0), y0 = static_cast<int64_t>(fy0);
            const float ax = static_cast<float>(xi - fx0), ay = static_cast<float>(yi - fy0);
            const float w00 = (1.0f - ax) * (1.0f - ay), w01 = ax * (1.0f - ay);
            const float w10 = (1.0f - ax) * ay, w11 = ax * ay;
            if (x0 >= 0 && x0 + 1 < W && y0 >= 0 && y0 + 1 < H) {
                const float* p = x + y0 * W + x0;
                for (int64_t ch = 0; ch < C; ++ch, p += hw) {
                    out[ch * hw] = w00 * p[0] + w01 * p[1] + w10 * p[W] + w11 * p[W + 1];
                }
            } else {
                // Border: x0 >= -1 and y0 >= -1 here, so only these four tests are needed.
                const bool in_x0 = x0 >= 0, in_x1 = x0 + 1 < W, in_y0 = y0 >= 0, in_y1 = y0 + 1 < H;
                for (int64_t ch = 0; ch < C; ++ch) {
                    const float* p = x + ch * hw;
                    const float v00 = in_y0 && in_x0 ? p[y0 * W + x0] : fill;
                    const float v01 = in_y0 && in_x1 ? p[y0 * W + x0 + 1] : fill;
                    const float v10 = in_y1 && in_x0 ? p[(y0 + 1) * W + x0] : fill;
                    const float v11 = in_y1 && in_x1 ? p[(y0 + 1) * W + x0 + 1] : fill;
                    out[ch * hw] = w00 * v00 + w01 * v01 + w10 * v10 + w11 * v11;
                }
            }
        }
    }
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

}  // namespace striate
