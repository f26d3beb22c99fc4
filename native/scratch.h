// 64-byte aligned scratch memory that grows on demand and is reused across calls: kernels run
// synchronously on the JS thread's behalf and are not reentrant, so one buffer per use suffices.
// Only for the addon's non-ISA translation units (addon.cc, expert_ffn.cc).
#pragma once
#include <cstdint>
#include <cstdlib>
#include <new>

namespace moira {

struct ScratchBuffer {
  uint8_t* p = nullptr;
  size_t n = 0;
  uint8_t* get(size_t bytes) {
    if (bytes > n) {
      free(p);
      n = bytes + bytes / 4;
      if (posix_memalign((void**)&p, 64, n) != 0) { p = nullptr; n = 0; throw std::bad_alloc(); }
    }
    return p;
  }
};

}  // namespace moira
