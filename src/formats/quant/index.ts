/** GGML tensor types: block geometry, reference dequantize / quantize (llama.cpp-compatible). */
export * from "./types.js";
export * from "./dequantize.js";
export * from "./quantize.js";
