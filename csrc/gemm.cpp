// gemm.cpp: the packed SGEMM behind gemm.hpp, in the Goto/BLIS style: the
// blocking, the task plan over threads and the route (packed, transposed or
// dot) of each call, over the micro-kernel family of the chosen ISA path
// (gemm_kernels.hpp), and the naive triple loop that serves as its oracle.
//
// Not here: the micro-kernels and packing (gemm_kernels.cpp),
// convolution-specific packing (im2col lives with the conv code), float64,
// any -march dependence.
#include "gemm.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include "gemm_kernels.hpp"
#include "memory.hpp"
#include "parallel.hpp"

namespace striate {

using namespace gemm_detail;

void sgemm_naive(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    for (int64_t i = 0; i < M; ++i) {
        for (int64_t j = 0; j < N; ++j) {
            float acc = 0.f;
            for (int64_t k = 0; k < K; ++k) {
                const float a = transA ? A[k * lda + i] : A[i * lda + k];
                const float b = transB ? B[j * ldb + k] : B[k * ldb + j];
                acc += a * b;
            }
            float* c = C + i * ldc + j;
            *c = beta == 0.f ? alpha * acc : alpha * acc + beta * *c;
        }
    }
}

namespace {

// ---- per-thread packing workspace: grows, never shrinks, freed at thread exit.
// Sizes are checked (memory.hpp): an overflow is a ValueError, a failed
// allocation an OutOfMemory naming the workspace and its bytes.
constexpr size_t kWorkspaceAlign = 64;

struct AlignedFree {
    void operator()(float* p) const { free_workspace(p, kWorkspaceAlign); }
};

struct Workspace {
    std::unique_ptr<float[], AlignedFree> a, b;
    int64_t a_cap = 0, b_cap = 0;

    static float* grow(std::unique_ptr<float[], AlignedFree>& p, int64_t& cap, int64_t n, const char* what) {
        if (n > cap) {
            p.reset();  // release first so the peak is not old + new
            cap = 0;
            p.reset(static_cast<float*>(allocate_workspace(n, sizeof(float), kWorkspaceAlign, what)));
            cap = n;
        }
        return p.get();
    }
};

Workspace& thread_workspace() {
    thread_local Workspace ws;
    return ws;
}

// ---- blocking. kc depends on K only and the row panels on M only; the task
// grid may depend on the thread count because its edges fall on panel edges.
constexpr int64_t kKC = 256;      // depth of a block: the A panel (S x kc) stays in L1
constexpr int64_t kNC = 512;      // columns of a packed B block: kc x nc stays in L2
constexpr int64_t kMCMax = 1024;  // rows of a task: its packed A block (about mc x kc) streams from L3
// A non-transposed B is read in place when a task has at most 3 row panels, or
// at most kDirectMaxPanels with a block depth of at least kDirectMinKC (thin
// blocks make the column-panel-outer order write C in a strided pattern) and a
// row stride that is not a multiple of 4 KiB (such rows all fall in the same
// cache sets, so the panel does not survive its re-reads). A B of more than
// kDirectMaxBytes may not be in the caches: read in place, its first pass is
// one or two cache lines from each of kc rows at a time, a pattern the
// prefetchers do not follow, while packing streams whole rows; so it is
// packed unless a task has at most 3 row panels. Zen 4, 2 threads, in place
// -> packed, side by side (the dx of a 3136 -> 1024 layer, 64 x 3136 x 1024
// at batch 64): AVX-512 (5 panels of 13 rows) 2.0-2.4 ms in place when B
// stayed in L3, 3.6-4.3 ms when other work had pushed it out, 2.3-2.7 ms
// packed either way; batch 128 (10 panels) 1.20-1.24x; AVX2 (11 panels of 6
// rows) 1.12x with B in L3 or not, batch 48 1.08x, batch 256 1.00x.
constexpr int64_t kDirectMaxPanels = 12;
constexpr int64_t kDirectMinKC = 128;
constexpr int64_t kDirectMaxBytes = int64_t(8) << 20;

bool read_b_in_place(bool transB, int64_t panels, int64_t kc, int64_t ldb, int64_t K, int64_t N) {
    if (transB) return false;
    if (panels <= 3) return true;
    const bool far = K * N * int64_t(sizeof(float)) > kDirectMaxBytes;
    return !far && panels <= kDirectMaxPanels && kc >= kDirectMinKC && ldb % 1024 != 0;
}

// Calls of more than kBalanceFlops get at least kBalanceTasks tasks per
// thread (when the shape has that many panels), however cheap one task per
// thread would be: parallel_for then lets a thread that finishes early take
// over the tasks a slow one (a core shared with other work) has not started.
// Quiet machine, Zen 4, 2 threads, side by side, one task against two per
// thread: 64 x 3136 x 1024 1.01x (AVX-512) and 1.03x (AVX2); 1024 x 3136 x
// 64 (transposed A) 0.99x and 1.00x; ResNet-20 training 1.02x.
constexpr double kBalanceFlops = 2e7;
constexpr int64_t kBalanceTasks = 2;

struct Plan {
    int64_t mr;      // rows per A panel (<= family mr), from M only
    int64_t kc;      // depth per block, from K only
    int64_t mt, nt;  // rows and columns per task: multiples of mr and nr
    int64_t tm, tn;  // number of tasks along M and N
};

Plan make_plan(const KernelFamily& f, int64_t M, int64_t N, int64_t K, int threads) {
    Plan p;
    p.mr = ceil_div(M, ceil_div(M, f.mr));
    p.kc = ceil_div(K, ceil_div(K, kKC));
    const int64_t mp = ceil_div(M, p.mr), np = ceil_div(N, f.nr);  // row and column panels
    const int64_t tm_min = ceil_div(mp, std::max<int64_t>(1, kMCMax / p.mr));
    int64_t pm = ceil_div(mp, tm_min), pn = np;  // panels per task
    const double flops = 2.0 * double(M) * double(N) * double(K);
    if (threads > 1 && !in_parallel_region() && flops > kMinParallelFlops) {
        // Estimated cycles of the slowest thread: FMA work plus packing per task.
        auto tasks_of = [&](int64_t a, int64_t b) { return ceil_div(mp, a) * ceil_div(np, b); };
        auto cost = [&](int64_t a, int64_t b) {
            const double rows = double(a * p.mr), cols = double(b * f.nr);
            return double(ceil_div(tasks_of(a, b), threads)) * (rows * cols * double(K) / 16.0 + 0.5 * double(K) * (rows + cols) + 2000.0);
        };
        const int64_t want = flops > kBalanceFlops ? kBalanceTasks * threads : 1;
        double best = cost(pm, pn);
        for (int64_t tm = tm_min; tm <= std::min(mp, tm_min * 8); ++tm) {
            for (int64_t tn = 1; tn <= std::min<int64_t>(np, 32); ++tn) {
                const int64_t a = ceil_div(mp, tm), b = ceil_div(np, tn);
                const double c = cost(a, b);
                const bool enough = tasks_of(a, b) >= want, had = tasks_of(pm, pn) >= want;
                if ((enough && !had) || (enough == had && c < best * 0.999)) {
                    best = c;
                    pm = a;
                    pn = b;
                }
            }
        }
    }
    p.mt = pm * p.mr;
    p.nt = pn * f.nr;
    p.tm = ceil_div(M, p.mt);
    p.tn = ceil_div(N, p.nt);
    return p;
}

// Merge an R x n block of the temporary tile (row stride ld_t) into C with strides (rs, cs).
void merge_tile(int64_t R, int64_t n, const float* t, int64_t ld_t, float* C, int64_t rs, int64_t cs,
                float beta) {
    for (int64_t r = 0; r < R; ++r) {
        for (int64_t j = 0; j < n; ++j) {
            float* c = C + r * rs + j * cs;
            *c = merge_value(beta == 0.f ? 0.f : *c, t[r * ld_t + j], beta);
        }
    }
}

// C = beta * C for K == 0 (zeros when beta == 0, whatever C held).
void scale_c(int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
    if (beta == 1.f) return;
    for (int64_t i = 0; i < M; ++i) {
        float* c = C + i * ldc;
        if (beta == 0.f) {
            std::fill(c, c + N, 0.f);
        } else {
            for (int64_t j = 0; j < N; ++j) c[j] *= beta;
        }
    }
}

// C(i, j) = C[i*rs + j*cs]; M, N, K >= 1. With `lanes8` (the AVX2 family, A
// not transposed, B transposed; see gemm_kernels.hpp): depth blocks of
// lanes_block_depth(K), packed in the lane-interleaved order, each computed as
// its 8 sub-blocks in turn.
void gemm_blocked(const KernelFamily& f, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                  const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t rs,
                  int64_t cs, int threads, bool lanes8 = false) {
    Plan p = make_plan(f, M, N, K, threads);
    if (lanes8) p.kc = lanes_block_depth(K);
    const int64_t nr = f.nr, S = f.s;
    const int64_t nc = std::min(p.nt, std::max<int64_t>(nr, (lanes8 ? kNC * kKC / p.kc : kNC) / nr * nr));
    auto pack_a = [&](bool tA, int64_t i0, int64_t m, int64_t k0, int64_t kc, float* dst) {
#if STRIATE_GEMM_X86
        if (lanes8) return pack_a_lanes8_avx2(A, lda, i0, m, k0, kc, p.mr, dst);
#endif
        f.pack_a(tA, A, lda, i0, m, k0, kc, p.mr, dst);
    };
    auto pack_b = [&](bool tB, int64_t k0, int64_t kc, int64_t j0, int64_t n, float* dst) {
#if STRIATE_GEMM_X86
        if (lanes8) return pack_b_lanes8_avx2(B, ldb, k0, kc, j0, n, dst);
#endif
        f.pack_b(tB, B, ldb, k0, kc, j0, n, dst);
    };
    parallel_for_2d(
        p.tm, p.tn,
        [&](int64_t ti, int64_t tj) {
            const int64_t i0 = ti * p.mt, j0 = tj * p.nt;
            const int64_t m = std::min(p.mt, M - i0), n = std::min(p.nt, N - j0);
            Workspace& ws = thread_workspace();
            float* pa = Workspace::grow(ws.a, ws.a_cap, ceil_div(m, p.mr) * S * p.kc, "the SGEMM packed-A workspace");
            float* pb = Workspace::grow(ws.b, ws.b_cap, ceil_div(std::min(nc, n), nr) * nr * p.kc,
                                        "the SGEMM packed-B workspace");
            alignas(64) float tile[kMaxMR * kMaxNR];
            const bool direct_b = !lanes8 && read_b_in_place(transB, ceil_div(m, p.mr), p.kc, ldb, K, N);
            for (int64_t k0 = 0; k0 < K; k0 += p.kc) {
                const int64_t kc = std::min(p.kc, K - k0);
                const float beta_k = k0 == 0 ? beta : 1.f;
                pack_a(transA, i0, m, k0, kc, pa);
                // One tile: row panel ii (R rows, packed at ap) times column panel q.
                auto tile_op = [&](const float* ap, int64_t ii, int64_t R, const float* bp, int64_t ldbp, int64_t jj,
                                   int64_t w) {
                    float* c = C + (i0 + ii) * rs + (j0 + jj) * cs;
                    // Depth [d0, d0 + dc) of the packed panels, merged with beta_d.
                    auto part = [&](int64_t d0, int64_t dc, float beta_d) {
                        if (w == nr && cs == 1) {
                            f.kernel[R](dc, ap + d0 * S, bp + d0 * ldbp, ldbp, c, rs, alpha, beta_d);
                        } else {
                            const ukernel_fn edge = 2 * w <= nr && f.half[R] ? f.half[R] : f.kernel[R];
                            edge(dc, ap + d0 * S, bp + d0 * ldbp, ldbp, tile, nr, alpha, 0.f);
                            merge_tile(R, w, tile, nr, c, rs, cs, beta_d);
                        }
                    };
                    if (!lanes8) {
                        part(0, kc, beta_k);
                        return;
                    }
                    for (int l = 0; l < 8 && lanes_sub_size(kc, l) > 0; ++l)
                        part(lanes_sub_offset(kc, l), lanes_sub_size(kc, l), l == 0 ? beta_k : 1.f);
                };
                if (direct_b) {
                    // Column panel outer, so each B panel is re-read from L1 by the few row panels.
                    const int64_t full = n / nr, w = n - full * nr;
                    if (w) f.pack_b(false, B, ldb, k0, kc, j0 + full * nr, w, pb);
                    for (int64_t q = 0; q <= full; ++q) {
                        if (q == full && !w) break;
                        const float* bp = q < full ? B + k0 * ldb + j0 + q * nr : pb;
                        const int64_t ldbp = q < full ? ldb : nr;
                        const float* ap = pa;
                        for (int64_t ii = 0; ii < m; ii += p.mr, ap += S * kc) {
                            tile_op(ap, ii, std::min(p.mr, m - ii), bp, ldbp, q * nr, q < full ? nr : w);
                        }
                    }
                    continue;
                }
                for (int64_t jc = 0; jc < n; jc += nc) {
                    const int64_t nb = std::min(nc, n - jc), npan = ceil_div(nb, nr);
                    pack_b(transB, k0, kc, j0 + jc, nb, pb);
                    const float* ap = pa;
                    for (int64_t ii = 0; ii < m; ii += p.mr, ap += S * kc) {
                        const int64_t R = std::min(p.mr, m - ii);
                        for (int64_t q = 0; q < npan; ++q) {
                            tile_op(ap, ii, R, pb + q * nr * kc, nr, jc + q * nr, std::min(nr, nb - q * nr));
                        }
                    }
                }
            }
        },
        threads);
}

void check_args(bool transA, bool transB, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc) {
    auto fail = [](const char* what, int64_t got, const std::string& need) {
        throw std::invalid_argument(std::string("sgemm: `") + what + "` must be " + need + ", got " +
                                    std::to_string(got));
    };
    if (M < 0) fail("M", M, ">= 0");
    if (N < 0) fail("N", N, ">= 0");
    if (K < 0) fail("K", K, ">= 0");
    const int64_t wa = transA ? M : K, wb = transB ? K : N;
    if (M > 0 && K > 0 && lda < wa) fail("lda", lda, ">= " + std::to_string(wa));
    if (K > 0 && N > 0 && ldb < wb) fail("ldb", ldb, ">= " + std::to_string(wb));
    if (M > 0 && N > 0 && ldc < N) fail("ldc", ldc, ">= " + std::to_string(N));
}

}  // namespace

namespace {
enum class Route { Packed, Transposed, Dot };

// Which path computes this shape: a function of the shape and family only.
Route route_for(const KernelFamily& f, bool transA, bool transB, int64_t M, int64_t N, int64_t K) {
#if STRIATE_GEMM_X86
    if (!transA && transB && use_dot_path(f.isa, M, K)) return Route::Dot;
#else
    (void)transA, (void)transB, (void)K;
#endif
    // Tiles are nr columns wide. When N is narrow and M is not, compute
    // C^T = op(B)^T op(A)^T instead so that the long dimension fills the vectors.
    const int64_t waste_n = M * ceil_div(N, f.nr) * f.nr, waste_t = N * ceil_div(M, f.nr) * f.nr;
    return 4 * waste_t < 3 * waste_n ? Route::Transposed : Route::Packed;
}

// The family of `isa`; one the CPU cannot run throws std::invalid_argument.
const KernelFamily& checked_family(Isa isa) {
    if (static_cast<int>(isa) > static_cast<int>(detected_isa())) {
        throw std::invalid_argument(std::string("sgemm: `isa` '") + isa_name(isa) +
                                    "' is not supported by this CPU (widest supported: '" +
                                    isa_name(detected_isa()) + "')");
    }
    return family_for(isa);
}
}  // namespace

int64_t sgemm_task_count(Isa isa, bool transA, bool transB, int64_t M, int64_t N, int64_t K, int threads) {
    const KernelFamily& f = checked_family(isa);
    if (M <= 0 || N <= 0 || K <= 0) return 0;
    if (threads <= 0) threads = get_num_threads();
    switch (route_for(f, transA, transB, M, N, K)) {
#if STRIATE_GEMM_X86
        case Route::Dot:
            return ceil_div(ceil_div(N, kDotRB), dot_groups_per_task(M, N, K, threads));
#endif
        case Route::Transposed: {
            const Plan p = make_plan(f, N, M, K, threads);
            return p.tm * p.tn;
        }
        default: {
            const Plan p = make_plan(f, M, N, K, threads);
            return p.tm * p.tn;
        }
    }
}

void sgemm_isa(Isa isa, bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
               int threads) {
    check_args(transA, transB, M, N, K, lda, ldb, ldc);
    const KernelFamily& f = checked_family(isa);
    if (M == 0 || N == 0) return;
    if (K == 0) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    // The plan splits tasks for the thread count that will actually run them.
    if (threads <= 0) threads = get_num_threads();
    switch (route_for(f, transA, transB, M, N, K)) {
#if STRIATE_GEMM_X86
        case Route::Dot:
            gemm_dot(f.isa, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, threads);
            break;
#endif
        case Route::Transposed:
            gemm_blocked(f, !transB, !transA, N, M, K, alpha, B, ldb, A, lda, beta, C, 1, ldc, threads);
            break;
        default:
            gemm_blocked(f, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 1, threads);
    }
}

namespace {
// The rows per A panel and the depth per block of the packed path (make_plan's rules).
int64_t panel_rows(const KernelFamily& f, int64_t M) { return ceil_div(M, ceil_div(M, f.mr)); }
int64_t block_depth(int64_t K) { return ceil_div(K, ceil_div(K, kKC)); }
}  // namespace

int64_t sgemm_packed_a_size(Isa isa, int64_t M, int64_t K) {
    const KernelFamily& f = checked_family(isa);
    return ceil_div(M, panel_rows(f, M)) * f.s * K;
}

void sgemm_pack_a(Isa isa, int64_t M, int64_t K, const float* A, int64_t lda, float* dst) {
    const KernelFamily& f = checked_family(isa);
    const int64_t mr = panel_rows(f, M), kcb = block_depth(K), panels = ceil_div(M, mr);
    for (int64_t k0 = 0; k0 < K; k0 += kcb) {
        const int64_t kc = std::min(kcb, K - k0);
        f.pack_a(false, A, lda, 0, M, k0, kc, mr, dst);
        dst += panels * f.s * kc;
    }
}

void sgemm_packed(Isa isa, int64_t M, int64_t N, int64_t K, const float* packed_a, const float* B, int64_t ldb,
                  float* C, int64_t ldc) {
    const KernelFamily& f = checked_family(isa);
    const int64_t mr = panel_rows(f, M), kcb = block_depth(K), panels = ceil_div(M, mr), nr = f.nr, S = f.s;
    const int64_t full = N / nr, w = N - full * nr;
    Workspace& ws = thread_workspace();
    float* pb = w ? Workspace::grow(ws.b, ws.b_cap, nr * kcb, "the SGEMM packed-B workspace") : nullptr;
    alignas(64) float tile[kMaxMR * kMaxNR];
    const float* pa = packed_a;
    for (int64_t k0 = 0; k0 < K; k0 += kcb) {
        const int64_t kc = std::min(kcb, K - k0);
        const float beta = k0 == 0 ? 0.f : 1.f;
        if (w) f.pack_b(false, B, ldb, k0, kc, full * nr, w, pb);
        // Column panel outer, as gemm_blocked reads B in place: each B panel is
        // re-read from L1 by the row panels.
        for (int64_t q = 0; q <= full; ++q) {
            if (q == full && !w) break;
            const float* bp = q < full ? B + k0 * ldb + q * nr : pb;
            const int64_t ldbp = q < full ? ldb : nr;
            const float* ap = pa;
            for (int64_t ii = 0; ii < M; ii += mr, ap += S * kc) {
                const int64_t R = std::min(mr, M - ii);
                float* c = C + ii * ldc + q * nr;
                if (q < full) {
                    f.kernel[R](kc, ap, bp, ldbp, c, ldc, 1.f, beta);
                } else {
                    const ukernel_fn edge = 2 * w <= nr && f.half[R] ? f.half[R] : f.kernel[R];
                    edge(kc, ap, bp, ldbp, tile, nr, 1.f, 0.f);
                    merge_tile(R, w, tile, nr, c, ldc, 1, beta);
                }
            }
        }
        pa += panels * S * kc;
    }
}

void sgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int threads) {
    sgemm_isa(active_isa(), transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, threads);
}

void sgemm_row_invariant(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                         int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, int threads) {
    check_args(transA, transB, M, N, K, lda, ldb, ldc);
    const KernelFamily& f = checked_family(active_isa());
    if (M == 0 || N == 0) return;
    if (K == 0) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    if (threads <= 0) threads = get_num_threads();
#if STRIATE_GEMM_X86
    // The dot kernels give every element the same arithmetic whatever the
    // tile, so row blocks of kRows compute each row exactly as a lone row
    // would be. The depth is blocked by up to kWideKC and the rows by up to 64,
    // as many as keep A's block (kRows x kc) in about 800 KB of L2: B, the
    // weights, then streams through once per 64 rows. Against depth blocks of
    // up to 2048 and A blocks of about 384 KB (Zen 4, AVX-512, 2 threads,
    // side by side, 64 x 3136 -> 1024: 3 row blocks of 28 + 28 + 8 and 2
    // depth blocks before, 1 and 1 now): 1.16x with B pushed out of the caches
    // between calls, 1.04-1.09x with B in L3.
    // Below a depth of 128 the per-element reduction costs more than the
    // packed path; on AVX2 it does at any depth for blocks of more than a few
    // rows, so AVX2 takes the lane-interleaved depth below. Past a depth of
    // 1536 the dot route still wins when B is wide: it reads B in place,
    // where the packed path copies all of it on every call (AVX-512, 2
    // threads, packed -> dot, measured with the former blocking, M = 1 / 64 /
    // 256: 3136 -> 1024 0.153 -> 0.091, 2.69 -> 2.06, 10.4 -> 8.3 ms; 1600 ->
    // 512 1.8x / 1.3x / 1.2x; 2048 -> 1024 4.2x / 1.0x / 0.94x), but not when
    // it is narrow (4096 -> 128: 0.81x and 0.79x at M = 64 and 256).
    constexpr int64_t kWideKC = 4096;
    const int64_t kc = ceil_div(K, ceil_div(K, kWideKC));
    const int64_t kRows = std::clamp<int64_t>(200 * 1024 / kc / 4 * 4, 4, 64);
    if (f.isa == Isa::avx512 && !transA && transB && K >= 128 && (K <= 1536 || N >= 256)) {
        for (int64_t i = 0; i < M; i += kRows) {
            gemm_dot(f.isa, std::min(kRows, M - i), N, K, alpha, A + i * lda, lda, B, ldb, beta, C + i * ldc,
                     ldc, threads, kWideKC);
        }
        return;
    }
    // AVX2, depth 128 and more: the packed path over the lane-interleaved
    // depth (gemm_kernels.hpp), whose one-row form reads B's rows straight
    // through. Against the packed path's plain order (Zen 4, AVX2, 2 threads,
    // side by side): M = 1 1.7-2.2x (3136 -> 1024: 0.20 -> 0.11 ms, 400 -> 120,
    // 2048 -> 1024); M = 64 and 256 0.98-1.10x on 3136 -> 1024, 1600 -> 512
    // and 4096 -> 128, 0.90x on 400 -> 120 (a single block: 8 sub-blocks of 50
    // to merge against 2 blocks of 200).
    if (f.isa == Isa::avx2 && !transA && transB && K >= kLanesMinK) {
        if (M == 1) {
            gemv_lanes8_avx2(N, K, alpha, A, B, ldb, beta, C, threads);
        } else {
            gemm_blocked(f, false, true, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 1, threads, true);
        }
        return;
    }
    // One row of A B^T (a batch of one through a fully-connected layer): the
    // packed path's arithmetic without packing B, which for one row costs more
    // than the product (3136 -> 1024 on 2 threads: 0.36 ms against 0.15 ms).
    if (M == 1 && !transA && transB && f.isa != Isa::generic) {
        gemv_t(N, K, block_depth(K), alpha, A, B, ldb, beta, C, threads);
        return;
    }
#endif
    // The packed path: the depth blocking depends on K only and every element
    // accumulates over k in the same order whatever tile holds it.
    gemm_blocked(f, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 1, threads);
}

}  // namespace striate

