{
  # Kernels are built three times from one source (native/kernels.cc), each into its own namespace
  # and static library with its own -m flags; the addon picks one at load (__builtin_cpu_supports).
  # No -march=native: the binary must run on any x86-64 and use AVX-512 only where present.
  "target_defaults": {
    "cflags": ["-O3", "-fno-math-errno"],
    "cflags_cc": ["-O3", "-std=c++17", "-fno-math-errno"],
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions"],
  },
  "targets": [
    {
      "target_name": "moira_kernels_scalar",
      "type": "static_library",
      "sources": ["native/kernels.cc"],
      "defines": ["MOIRA_NS=scalar"],
      "cflags_cc": ["-fPIC"],
    },
    {
      "target_name": "moira_kernels_avx2",
      "type": "static_library",
      "sources": ["native/kernels.cc"],
      "defines": ["MOIRA_NS=avx2"],
      "cflags_cc": ["-fPIC", "-mavx2", "-mfma", "-mf16c"],
    },
    {
      "target_name": "moira_kernels_avx512",
      "type": "static_library",
      "sources": ["native/kernels.cc"],
      "defines": ["MOIRA_NS=avx512"],
      "cflags_cc": ["-fPIC", "-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl",
                    "-mavx512vnni", "-mavx512bf16",
                    # GCC 12's own avx512fintrin.h trips -W(maybe-)uninitialized on its reduction helpers
                    "-Wno-uninitialized", "-Wno-maybe-uninitialized"],
    },
    {
      "target_name": "moira_native",
      "sources": ["native/addon.cc", "native/direct_reader.cc", "native/expert_ffn.cc", "native/quantize.cc"],
      # quantize.cc must match lowbit-quant.ts bit for bit: no fused multiply-add
      "cflags_cc": ["-ffp-contract=off"],
      "dependencies": ["moira_kernels_scalar", "moira_kernels_avx2", "moira_kernels_avx512"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "libraries": ["-lpthread"],
    },
  ],
}
