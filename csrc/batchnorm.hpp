// batchnorm.hpp: batch normalisation kernels on NCHW float32 tensors, the
// training forward (batch statistics), the forward with given per-channel
// statistics (evaluation mode, frozen layers) and the backward of both.
//
// Semantics are torch.nn.functional.batch_norm's, spelled out in
// batchnorm.cpp: the variance is the biased one (divided by N*H*W); the
// running-statistics update (unbiased variance, momentum) stays with the
// caller, which receives the batch mean and variance in float64.
//
// Determinism: every per-channel sum runs in one fixed order that depends on
// the shape only (fixed-lane float64 accumulators, pieces of a channel added
// in order), so results are bit-identical for any thread count; the element
// arithmetic is plain IEEE float/double without fused multiply-adds
// (batchnorm.cpp is compiled with -ffp-contract=off), so every ISA path
// (cpu.hpp) gives the same bits too.
//
// Not here: argument checking, shape arithmetic and allocation (bind_norm.cpp),
// the running statistics and the choice of mode (layers/normalization.py).
#pragma once

#include <cstdint>

namespace striate {

// Geometry of one call: N images of C channels, HW = H*W positions per plane.
// Every (N, C, H, W) array below is N*C planes of HW floats, channel c of image
// n at offset (n*C + c)*HW.
struct BnGeom {
    int64_t N, C, HW;
};

// Training forward. x, y: (N, C, H, W); gamma, beta: (C,); mean, var: (C,)
// float64, the batch mean and biased variance; invstd: (C,), float(1 /
// sqrt(var + eps)). y = (x - float(mean)) * float(invstd * gamma) + beta per
// element. N*HW must be at least 1.
void batch_norm_forward_train(const float* x, const float* gamma, const float* beta, double eps, float* y,
                              double* mean, double* var, float* invstd, const BnGeom& g);

// Forward with given statistics: y = (x - mean[c]) * scale[c] + shift[c].
// x, y: (N, C, H, W); mean, scale, shift: (C,). (With mean = 0 this is the
// folded x * scale + shift.)
void batch_norm_forward_apply(const float* x, const float* mean, const float* scale, const float* shift, float* y,
                              const BnGeom& g);

// Backward. dy, x: (N, C, H, W); mean, invstd, gamma: (C,), the statistics the
// forward normalised with (xhat = (x - mean) * invstd). Outputs, each skipped
// when its pointer is null:
//   dbeta: (C,)  sum of dy over (N, H, W)
//   dgamma: (C,) sum of dy * (x - mean) over (N, H, W), times invstd
//   dx: (N, C, H, W)
//     batch_stats:  gamma*invstd * (dy - dbeta/n - xhat * dgamma/n), n = N*HW
//     otherwise:    gamma*invstd * dy
// With batch_stats a wanted dx needs both sums, so they are computed then
// even when dgamma and dbeta are not wanted.
void batch_norm_backward(const float* dy, const float* x, const float* mean, const float* invstd,
                         const float* gamma, bool batch_stats, float* dx, float* dgamma, float* dbeta,
                         const BnGeom& g);

}  // namespace striate
