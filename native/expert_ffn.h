// The grouped SwiGLU FFN of an MoE layer as one native op: y[t] = sum over t's slots of
// w * down(silu(gate x_t) * up x_t), with tokens gathered per expert. Runs entirely on the pool:
// each token is quantized once for gate and up, silu-mul is fused into the gate/up pass, and the
// per-token sum runs in slot order (results never depend on thread count or task order).
// No N-API and no model knowledge: pointers, sizes, GGUF type ids.
#pragma once
#include <cstdint>

#include "kernels.h"
#include "threadpool.h"

namespace moira {

// How gate g and up u combine: silu(g) * u, or GPT-OSS's clamped form
// min(g, limit) * sigmoid(alpha * min(g, limit)) * (clamp(u, -limit, limit) + 1)
enum GluKind { GLU_SWIGLU = 0, GLU_SWIGLU_OAI = 1 };

struct ExpertFfnArgs {
  int d, ff;                 // model width (gate/up cols, down rows), expert width (gate/up rows, down cols)
  int nTok;
  const float* x;            // [nTok, d]
  float* out;                // [nTok, d], overwritten (accumulate: added to, see below)
  int nExpert;
  const int32_t* types;      // [nExpert, 3]: gate, up, down GGUF types
  const uint8_t* const* w;   // [nExpert, 3]: gate, up, down weights (GGUF row layout)
  const int32_t* offsets;    // [nExpert + 1]: expert i owns slots offsets[i] .. offsets[i+1]
  const int32_t* tokens;     // [nSlot]: the token of each slot
  const float* weights;      // [nSlot]: its routing weight
  // out[t] starts from its current value instead of 0: one layer's experts computed in groups
  // (expert order kept) then give the same bits as one call
  bool accumulate = false;
  // when set ([nSlot, d]): each slot's unweighted output lands here and out is not touched
  float* slotOut = nullptr;
  GluKind glu = GLU_SWIGLU;
  float alpha = 0, limit = 0;  // GLU_SWIGLU_OAI's
  // when set ([nExpert, 3]): gate [ff], up [ff], down [d] biases per expert, null where it has none
  const float* const* bias = nullptr;
};

void expert_ffn(const KernelTable* K, ThreadPool& P, const ExpertFfnArgs& a);

}  // namespace moira
