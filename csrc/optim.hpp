// optim.hpp: the optimizer updates (SGD, Adam/AdamW, RMSprop) as one pass over
// the elements, and the finite check of a gradient.
//
// Each update reads the gradient, the state and the parameter of an element
// once and writes the state and the parameter once, where the NumPy code of
// striate.optim makes a whole-array pass per operation. The results are the
// NumPy code's, bit for bit, in float32 and in float64: every element goes
// through the same operations in the same order, each rounded to T (no fused
// multiply-add: optim.cpp is compiled with -ffp-contract=off), with the
// scalars the NumPy code casts with dt(...) passed here as the same Python
// doubles and cast with static_cast<T>. Each element depends on its own inputs
// only, so the thread count never changes a bit. The arrays must not overlap
// (the binding checks); grad is never written.
//
// NaN comes out exactly where NumPy gives NaN, but its payload and sign are
// not specified where two different NaNs meet in one sum or product (a NaN
// gradient and a state that an infinity turned into x86's negative default
// NaN, say): NumPy itself returns either operand's there, depending on the
// array's length and the element's place in it (its vector body and its tail
// order the operands differently).
//
// The scalars: a term the NumPy code skips (weight_decay == 0, no dampening,
// no decoupled decay) has its flag false, and its value is not read.
//
// Not here: argument checks (bind_optim.cpp), the creation of the state
// arrays and the step count (optim/optimizers.py).
#pragma once

#include <cstdint>

namespace striate {

struct SgdScalars {
    double lr;
    double weight_decay;  // g = grad + p * weight_decay, when decay
    double momentum;      // used when a momentum buffer is given
    double dampening;     // 1 - dampening as Python computed it, when damp
    bool decay;
    bool damp;
    bool nesterov;
    bool first;  // the buffer is new: buf = g instead of buf = momentum * buf + ...
};

// SGD; buf == nullptr: no momentum.
template <class T>
void sgd_update(T* p, const T* grad, T* buf, int64_t n, const SgdScalars& s);

struct AdamScalars {
    double step_size;     // lr / (1 - beta1**t)
    double weight_decay;  // L2: g = grad + p * weight_decay, when decay
    double decoupled;     // AdamW: p = p * (1 - lr * weight_decay) first, when decoupled_decay
    double one_minus_beta1;
    double beta2;
    double one_minus_beta2;
    double bias_correction2;  // sqrt(1 - beta2**t)
    double eps;
    bool decay;
    bool decoupled_decay;
};

template <class T>
void adam_update(T* p, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t n, const AdamScalars& s);

struct RmspropScalars {
    double lr;
    double alpha;
    double one_minus_alpha;
    double eps;
    double weight_decay;  // g = grad + p * weight_decay, when decay
    double momentum;      // used when a momentum buffer is given
    bool decay;
};

// RMSprop; grad_avg == nullptr: not centered; buf == nullptr: no momentum.
template <class T>
void rmsprop_update(T* p, const T* grad, T* square_avg, T* grad_avg, T* buf, int64_t n, const RmspropScalars& s);

// True when no element of a[0, n) is an infinity or a NaN.
template <class T>
bool all_finite(const T* a, int64_t n);

}  // namespace striate
