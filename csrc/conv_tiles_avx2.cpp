// conv_tiles_avx2.cpp: the convolution micro-kernels of conv_tiles.hpp
// instantiated for AVX2 + FMA (8 lanes, 16 registers), every kernel compiled with
// that target attribute only, and the kit that exports them.
//
// Not here: the kernels' source (conv_tiles.hpp), the drivers (conv_*.cpp).
#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

#include "conv_internal.hpp"
#include "simd.hpp"

namespace striate {
namespace conv {

#if STRIATE_SIMD_X86

namespace avx2_tiles {

using V = simd::Avx2;
#define STRIATE_TILE_TARGET STRIATE_TARGET_AVX2
#include "conv_tiles.hpp"
#undef STRIATE_TILE_TARGET

const ConvKit kKit = make_kit(Isa::avx2);

}  // namespace avx2_tiles

const ConvKit* kit_avx2() { return &avx2_tiles::kKit; }

#else

const ConvKit* kit_avx2() { return nullptr; }

#endif

}  // namespace conv
}  // namespace striate
