// batchnorm_loops.hpp: the loops of the batch normalisation kernels
// (batchnorm.cpp), written once and compiled once per ISA path, and the BnKit
// that exports them.
//
// Deliberately without an include guard: batchnorm.cpp includes it three
// times, each inside its own namespace, after defining `using D = ...;` (the
// 16 float64 lanes of that path, see batchnorm.cpp) and STRIATE_BN_TARGET (the
// target attribute every function here carries, empty for generic).
//
// Every loop covers channels [c0, c1) over channel positions [k0, k1) (k =
// n*HW + h, the same range in every channel) and walks them in memory order:
// image by image, and inside an image channel by channel, so a call streams
// contiguous runs of (c1 - c0)*HW floats. Arrays are (N, C, HW); per-channel
// arrays are (C,) and indexed by the absolute channel c.
//
// A sum puts the value at h into lane h % 16 of its channel: whole blocks of
// 16 through D, the values before the first and after the last whole block of
// a plane segment one by one into a scalar edge lane; lane l's total is its
// vector part plus its edge part, and the lanes are added by lane_tree. So a
// channel's sum depends on [k0, k1) only, never on [c0, c1) or on which
// thread runs it. The element loops are plain loops the compiler vectorises
// for the target.
//
// Not here: the choice of pieces and blocks, the statistics, threads
// (batchnorm.cpp).

// Channels summed together in one sweep (their accumulators stay in L1).
constexpr int64_t kGroup = 8;

// Lane l's total, then the fixed tree: (l + l+8), then (l + l+4), then (0+2) + (1+3).
STRIATE_BN_TARGET STRIATE_SIMD_INLINE double lane_tree(const typename D::acc& a, const double* edge /* (16,) */) {
    double v[kLanes], t[8], u[4];
    D::store(v, a);
    for (int l = 0; l < kLanes; ++l) v[l] += edge[l];
    for (int l = 0; l < 8; ++l) t[l] = v[l] + v[l + 8];
    for (int l = 0; l < 4; ++l) u[l] = t[l] + t[l + 4];
    return (u[0] + u[2]) + (u[1] + u[3]);
}

// out[c] = sum of x over [k0, k1) of channel c, for c in [c0, c1).
// x: (N, C, HW); out: (C,).
STRIATE_BN_TARGET void sums(const float* x, int64_t C, int64_t HW, int64_t c0, int64_t c1, int64_t k0, int64_t k1,
                            double* out) {
    for (int64_t g0 = c0; g0 < c1; g0 += kGroup) {
        const int64_t g1 = std::min(c1, g0 + kGroup);
        typename D::acc acc[kGroup];
        double edge[kGroup][kLanes] = {};
        for (int64_t j = 0; j < g1 - g0; ++j) acc[j] = D::zero();
        for (int64_t k = k0; k < k1;) {
            const int64_t n = k / HW, h0 = k % HW, h1 = std::min(HW, h0 + (k1 - k));
            for (int64_t j = 0; j < g1 - g0; ++j) {
                const float* p = x + (n * C + g0 + j) * HW;  // (HW,) plane (n, g0 + j)
                double* e = edge[j];                          // (16,)
                typename D::acc a = acc[j];
                int64_t h = h0;
                for (; h < h1 && h % kLanes != 0; ++h) e[h % kLanes] += static_cast<double>(p[h]);
                for (; h + kLanes <= h1; h += kLanes) D::add(a, p + h);
                for (; h < h1; ++h) e[h % kLanes] += static_cast<double>(p[h]);
                acc[j] = a;
            }
            k += h1 - h0;
        }
        for (int64_t j = 0; j < g1 - g0; ++j) out[g0 + j] = lane_tree(acc[j], edge[j]);
    }
}

// out[c] = sum of (x - mean[c])^2 in float64 over [k0, k1), c in [c0, c1).
// x: (N, C, HW); mean, out: (C,).
STRIATE_BN_TARGET void sqdevs(const float* x, int64_t C, int64_t HW, int64_t c0, int64_t c1, int64_t k0, int64_t k1,
                              const double* mean, double* out) {
    for (int64_t g0 = c0; g0 < c1; g0 += kGroup) {
        const int64_t g1 = std::min(c1, g0 + kGroup);
        typename D::acc acc[kGroup];
        double edge[kGroup][kLanes] = {};
        for (int64_t j = 0; j < g1 - g0; ++j) acc[j] = D::zero();
        for (int64_t k = k0; k < k1;) {
            const int64_t n = k / HW, h0 = k % HW, h1 = std::min(HW, h0 + (k1 - k));
            for (int64_t j = 0; j < g1 - g0; ++j) {
                const float* p = x + (n * C + g0 + j) * HW;  // (HW,)
                double* e = edge[j];                          // (16,)
                const double m = mean[g0 + j];
                typename D::acc a = acc[j];
                int64_t h = h0;
                for (; h < h1 && h % kLanes != 0; ++h) {
                    const double d = static_cast<double>(p[h]) - m;
                    e[h % kLanes] += d * d;
                }
                for (; h + kLanes <= h1; h += kLanes) D::add_sqdev(a, p + h, m);
                for (; h < h1; ++h) {
                    const double d = static_cast<double>(p[h]) - m;
                    e[h % kLanes] += d * d;
                }
                acc[j] = a;
            }
            k += h1 - h0;
        }
        for (int64_t j = 0; j < g1 - g0; ++j) out[g0 + j] = lane_tree(acc[j], edge[j]);
    }
}

// sdy[c] = sum of dy, sdyx[c] = sum of dy * (x - mean[c]), float64, over
// [k0, k1), c in [c0, c1). dy, x: (N, C, HW); mean: (C,) float; sdy, sdyx: (C,).
STRIATE_BN_TARGET void grad_sums(const float* dy, const float* x, int64_t C, int64_t HW, int64_t c0, int64_t c1,
                                 int64_t k0, int64_t k1, const float* mean, double* sdy, double* sdyx) {
    for (int64_t g0 = c0; g0 < c1; g0 += kGroup) {
        const int64_t g1 = std::min(c1, g0 + kGroup);
        typename D::acc ab[kGroup], ag[kGroup];
        double eb[kGroup][kLanes] = {}, eg[kGroup][kLanes] = {};
        for (int64_t j = 0; j < g1 - g0; ++j) ab[j] = ag[j] = D::zero();
        for (int64_t k = k0; k < k1;) {
            const int64_t n = k / HW, h0 = k % HW, h1 = std::min(HW, h0 + (k1 - k));
            for (int64_t j = 0; j < g1 - g0; ++j) {
                const int64_t off = (n * C + g0 + j) * HW;
                const float* pd = dy + off;  // (HW,)
                const float* px = x + off;   // (HW,)
                double* fb = eb[j];          // (16,)
                double* fg = eg[j];          // (16,)
                const double m = static_cast<double>(mean[g0 + j]);
                typename D::acc a = ab[j], b = ag[j];
                int64_t h = h0;
                for (; h < h1 && h % kLanes != 0; ++h) {
                    const double d = static_cast<double>(pd[h]);
                    fb[h % kLanes] += d;
                    fg[h % kLanes] += d * (static_cast<double>(px[h]) - m);
                }
                for (; h + kLanes <= h1; h += kLanes) {
                    D::add(a, pd + h);
                    D::add_proddev(b, pd + h, px + h, m);
                }
                for (; h < h1; ++h) {
                    const double d = static_cast<double>(pd[h]);
                    fb[h % kLanes] += d;
                    fg[h % kLanes] += d * (static_cast<double>(px[h]) - m);
                }
                ab[j] = a;
                ag[j] = b;
            }
            k += h1 - h0;
        }
        for (int64_t j = 0; j < g1 - g0; ++j) {
            sdy[g0 + j] = lane_tree(ab[j], eb[j]);
            sdyx[g0 + j] = lane_tree(ag[j], eg[j]);
        }
    }
}

// y = (x - m[c]) * a[c] + b[c] over [k0, k1), c in [c0, c1).
// x, y: (N, C, HW); m, a, b: (C,).
STRIATE_BN_TARGET void apply(const float* x, float* y, int64_t C, int64_t HW, int64_t c0, int64_t c1, int64_t k0,
                             int64_t k1, const float* m, const float* a, const float* b) {
    for (int64_t k = k0; k < k1;) {
        const int64_t n = k / HW, h0 = k % HW, h1 = std::min(HW, h0 + (k1 - k));
        for (int64_t c = c0; c < c1; ++c) {
            const int64_t off = (n * C + c) * HW;
            const float* p = x + off;  // (HW,)
            float* q = y + off;        // (HW,)
            const float mc = m[c], ac = a[c], bc = b[c];
            for (int64_t h = h0; h < h1; ++h) q[h] = (p[h] - mc) * ac + bc;
        }
        k += h1 - h0;
    }
}

// dx = ((dy - mdb[c]) - (x - m[c]) * b[c]) * s[c] over [k0, k1), c in [c0, c1).
// dy, x, dx: (N, C, HW); m, s, mdb, b: (C,).
STRIATE_BN_TARGET void dx_batch(const float* dy, const float* x, float* dx, int64_t C, int64_t HW, int64_t c0,
                                int64_t c1, int64_t k0, int64_t k1, const float* m, const float* s, const float* mdb,
                                const float* b) {
    for (int64_t k = k0; k < k1;) {
        const int64_t n = k / HW, h0 = k % HW, h1 = std::min(HW, h0 + (k1 - k));
        for (int64_t c = c0; c < c1; ++c) {
            const int64_t off = (n * C + c) * HW;
            const float* pd = dy + off;  // (HW,)
            const float* px = x + off;   // (HW,)
            float* q = dx + off;         // (HW,)
            const float mc = m[c], sc = s[c], dc = mdb[c], bc = b[c];
            for (int64_t h = h0; h < h1; ++h) q[h] = ((pd[h] - dc) - (px[h] - mc) * bc) * sc;
        }
        k += h1 - h0;
    }
}

// dx = dy * s[c] over [k0, k1), c in [c0, c1). dy, dx: (N, C, HW); s: (C,).
STRIATE_BN_TARGET void dx_scale(const float* dy, float* dx, int64_t C, int64_t HW, int64_t c0, int64_t c1,
                                int64_t k0, int64_t k1, const float* s) {
    for (int64_t k = k0; k < k1;) {
        const int64_t n = k / HW, h0 = k % HW, h1 = std::min(HW, h0 + (k1 - k));
        for (int64_t c = c0; c < c1; ++c) {
            const int64_t off = (n * C + c) * HW;
            const float* pd = dy + off;  // (HW,)
            float* q = dx + off;         // (HW,)
            const float sc = s[c];
            for (int64_t h = h0; h < h1; ++h) q[h] = pd[h] * sc;
        }
        k += h1 - h0;
    }
}

constexpr BnKit kKit{sums, sqdevs, apply, grad_sums, dx_batch, dx_scale};
