// elementwise.hpp: the element-wise kernels the layers run between
// convolutions: ReLU forward and backward and the residual sum, on flat
// float32 buffers, spread over the threads.
//
// Semantics are NumPy's, bit for bit, so the Python layers may take either
// path: relu is np.maximum(x, 0) (NaN passes, -0.0 becomes +0.0), relu_backward is
// dy * (y > 0) (a NaN dy stays NaN where y <= 0, a negative dy gives -0.0),
// add is a + b. Each output element depends on its inputs only, so the thread
// count never changes a bit.
//
// Not here: argument checks and allocation (bind_elementwise.cpp), the
// activations other than ReLU (layers/activation.py, NumPy).
#pragma once

#include <cstdint>

namespace striate {

// y[i] = x[i] <= 0 ? +0.0 : x[i] (NaN passes); y may be x.
void relu_forward(const float* x, float* y, int64_t n);
// dx[i] = dy[i] * (y[i] > 0 ? 1 : 0); dx may be dy.
void relu_backward(const float* dy, const float* y, float* dx, int64_t n);
// out[i] = a[i] + b[i], then relu_forward's rule when relu; out may be a or b.
void add_forward(const float* a, const float* b, float* out, int64_t n, bool relu);
// Each of `rows` rows of z (rows x cols, cols >= 1) replaced by its softmax,
// exp(z - max) / sum, in place: predict's class probabilities. A row with a
// NaN, or with +inf, gives NaN, as NumPy's formula does.
void softmax_rows(float* z, int64_t rows, int64_t cols);

}  // namespace striate
