// memory.hpp: byte counts in checked int64 arithmetic, and the out-of-memory
// error that says what was being allocated and how many bytes it needed.
//
// Every buffer the core allocates (the output arrays of bind_util.hpp's
// new_array, and every per-thread workspace) first computes its byte count
// with checked_bytes(), which throws std::invalid_argument (ValueError) when
// the count overflows int64. An allocation that then fails throws
// OutOfMemory, which bindings.cpp turns into MemoryError with its message;
// the bindings prefix the op's name (bind_util.hpp, call_without_gil).
//
// Not here: the allocation policy of any kernel (workspaces grow on demand
// and are kept per thread where they are used), any Python type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>

namespace striate {

// std::bad_alloc with a message: what could not be allocated, and its bytes.
class OutOfMemory : public std::bad_alloc {
   public:
    explicit OutOfMemory(std::string msg) : msg_(std::move(msg)) {}
    const char* what() const noexcept override { return msg_.c_str(); }

   private:
    std::string msg_;
};

// count * elem_size as int64, or std::invalid_argument naming `what`.
inline int64_t checked_bytes(int64_t count, size_t elem_size, const char* what) {
    const int64_t e = static_cast<int64_t>(elem_size);
    if (count < 0) throw std::invalid_argument(std::string(what) + ": negative element count " + std::to_string(count));
    if (count != 0 && e > std::numeric_limits<int64_t>::max() / count) {
        throw std::invalid_argument(std::string(what) + ": the byte count overflows int64: " + std::to_string(count) +
                                    " elements * " + std::to_string(e) + " bytes");
    }
    return count * e;
}

inline std::string out_of_memory_message(const std::string& what, int64_t bytes) {
    return "out of memory: " + what + " needs " + std::to_string(bytes) + " bytes";
}

[[noreturn]] inline void throw_out_of_memory(const std::string& what, int64_t bytes) {
    throw OutOfMemory(out_of_memory_message(what, bytes));
}

// `count` elements of `elem_size` bytes, aligned to `align` (a power of two,
// at least alignof(max_align_t)), rounded up to whole `align` blocks; free with
// free_workspace(p, align). Throws std::invalid_argument when the byte count
// overflows and OutOfMemory when the allocation fails, both naming `what`.
inline void* allocate_workspace(int64_t count, size_t elem_size, size_t align, const char* what) {
    int64_t bytes = checked_bytes(count, elem_size, what);
    const int64_t a = static_cast<int64_t>(align);
    if (bytes > std::numeric_limits<int64_t>::max() - (a - 1)) {
        throw std::invalid_argument(std::string(what) + ": the byte count overflows int64: " + std::to_string(bytes) +
                                    " bytes rounded up to a multiple of " + std::to_string(a));
    }
    bytes = (bytes + a - 1) / a * a;
    if (bytes == 0) bytes = a;
    void* p = ::operator new(static_cast<size_t>(bytes), std::align_val_t(align), std::nothrow);
    if (!p) throw_out_of_memory(what, bytes);
    return p;
}

inline void free_workspace(void* p, size_t align) noexcept { ::operator delete(p, std::align_val_t(align)); }

}  // namespace striate
