// cpu.hpp: the one place in striate that asks the CPU what it can do, and the
// instruction-set path every kernel takes.
//
// detected_isa() is the widest path this CPU runs (AVX-512 needs avx512f,
// avx512bw, avx512vl and fma; AVX2 needs avx2 and fma). active_isa() is the
// path the kernels take: detected_isa() unless STRIATE_ISA (read once, at the
// first call) or set_isa() lowered it. Every kernel family dispatches on
// active_isa() at run time, so one build runs on any x86-64 CPU; nothing here
// depends on compiler flags.
//
// Not here: the kernels themselves, and the Python-side validation of names
// (striate._config), which turns std::invalid_argument into ValueError.
#pragma once

#include <string>

namespace striate {

enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2 };

// The widest path the CPU supports.
Isa detected_isa();
// The path every kernel takes now; never wider than detected_isa().
Isa active_isa();
// Sets the path. Throws std::invalid_argument when isa is wider than the CPU
// supports. Kernels already running finish on the path they started with.
void set_isa(Isa isa);
// "generic", "avx2" or "avx512".
const char* isa_name(Isa isa);
// The inverse of isa_name; throws std::invalid_argument for any other name.
Isa parse_isa(const std::string& name);

}  // namespace striate
