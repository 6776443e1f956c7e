// augment.hpp: batched image augmentation kernels (affine warp, flip, crop, grayscale)
// and the counter-based random stream that drives the random transforms.
//
// Every kernel takes a C-contiguous float32 batch x (N, C, H, W), writes a new
// batch y, and takes its per-sample parameters as arrays of length N. Samples
// are independent and are spread over threads with parallel_for, so the output
// is bit-identical for every thread count. The random stream is a pure function
// of (key, sample index, draw index): it does not depend on threads or on how a
// batch is split.
//
// Not here: argument checking (bind_augment.cpp and striate/augment.py), random
// parameter ranges (striate/augment.py), interpolation other than bilinear,
// padding modes other than a constant fill.
#pragma once

#include <cstdint>

namespace striate {

// Geometry conventions (torchvision's rotate/affine): pixel (x, y) has x = column,
// y = row (growing downwards); the centre is ((W-1)/2, (H-1)/2). The forward map
// rotates by angle_deg counter-clockwise as seen on screen and scales about the
// centre, then translates by (tx, ty) pixels. Each output pixel samples the input
// at the inverse map with bilinear interpolation; taps outside the image read `fill`.
//   x, y are (N, C, H, W); angle_deg, tx, ty, scale are (N,); scale > 0; (H+5)*(W+5) < 2**31.
void affine_forward(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W,
                    const double* angle_deg, const double* tx, const double* ty, const double* scale,
                    float fill, int threads = 0);

// Mirror left-right the samples whose flag is non-zero (all when flags is null); copy the rest.
//   x, y are (N, C, H, W); flags is (N,) or null.
void hflip_forward(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W,
                   const uint8_t* flags, int threads = 0);

// Crop an (out_h, out_w) window at (top[n], left[n]) from each sample padded by
// `padding` pixels of `fill` on every side. top/left are in padded coordinates and
// must satisfy 0 <= top <= H + 2*padding - out_h (same for left/W).
//   x is (N, C, H, W); y is (N, C, out_h, out_w); top, left are (N,).
void crop_forward(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W,
                  const int64_t* top, const int64_t* left, int64_t out_h, int64_t out_w, int64_t padding,
                  float fill, int threads = 0);

// Luma 0.299 R + 0.587 G + 0.114 B for C == 3 (a copy for C == 1), repeated to out_c channels.
//   x is (N, C, H, W) with C in {1, 3}; y is (N, out_c, H, W).
void grayscale_forward(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t out_c,
                       int threads = 0);

// Counter-based uniform numbers in [0, 1): out[i*k + j] = U(key, start + i, j).
// A stateless hash (splitmix64 finaliser, applied twice) of the key, the sample
// index and the draw index; 53 random bits per number.
//   out is (n, k).
void uniform_stream(uint64_t key, int64_t start, int64_t n, int64_t k, double* out);

// Dropout's keep mask, n values: out[i] = scale where element i is kept, else 0.
// Element i is kept when its 32-bit number is >= threshold (threshold =
// ceil(p * 2^32) drops with probability p); the numbers of elements 2j and 2j + 1
// are the low and high halves of splitmix64's output j for the seed key,
// mix64(key + (j + 1) * 0x9E3779B97F4A7C15). Counter-based: the same mask for
// any thread count or ISA path (striate.layers.core computes the same one in
// NumPy on the NumPy backend).
void dropout_mask(uint64_t key, int64_t n, uint64_t threshold, float scale, float* out, int threads = 0);
void dropout_mask(uint64_t key, int64_t n, uint64_t threshold, double scale, double* out, int threads = 0);

}  // namespace striate
