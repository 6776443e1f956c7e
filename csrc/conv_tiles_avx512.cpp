// conv_tiles_avx512.cpp: the convolution micro-kernels of conv_tiles.hpp
// instantiated for AVX-512 (16 lanes, 32 registers), every kernel compiled with
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

namespace avx512_tiles {

using V = simd::Avx512;
#define STRIATE_TILE_TARGET STRIATE_TARGET_AVX512
#include "conv_tiles.hpp"
#undef STRIATE_TILE_TARGET

const ConvKit kKit = make_kit(Isa::avx512);

}  // namespace avx512_tiles

const ConvKit* kit_avx512() { return &avx512_tiles::kKit; }

#else

const ConvKit* kit_avx512() { return nullptr; }

#endif

}  // namespace conv
}  // namespace striate
