// See expert_ffn.h. Three passes per call: (1) gate and up rows of every expert over its gathered
// tokens, silu-mul on the spot; (2) down rows over the quantized activations of each slot; (3) the
// weighted sum per token. Activation quantization (cheap, per token) runs between them. A decode
// call (< 4 tokens) runs (1) and (2) as one pool run; (3) then runs on the calling thread.
#include "expert_ffn.h"
#include "scratch.h"

#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <memory>
#include <new>
#include <vector>

namespace moira {
namespace {

ScratchBuffer gActX[3], gGate, gUp, gActH, gY;


struct Task { int e, r0, r1; };

// Row chunks of one expert, at most `target` bytes of weights each (`mats` matrices of `rb`-byte
// rows). Few tokens: the pass streams every weight byte once, so chunks are as long as balance
// allows (long streams, few claims of the shared task counter). Many tokens: <= 192 KiB so a
// chunk's weights stay in L2 while every 4-token tile passes over them, and chunks are whole
// multiples of the kernels' 16-row panels (KernelTable::panel_rows) where the rows allow.
void chunk_rows(std::vector<Task>& tasks, int e, int rows, size_t target, size_t rb, int mats, int align) {
  const int maxRows = (int)std::max<size_t>(8, target / (rb * mats));
  const int nch = (rows + maxRows - 1) / maxRows;
  const int chunk = (int)round_up((size_t)(rows + nch - 1) / nch, (size_t)align);
  for (int r = 0; r < rows; r += chunk) tasks.push_back({e, r, std::min(rows, r + chunk)});
}

// GPT-OSS's clamped SwiGLU, as ggml's swiglu_oai computes it in f32
void swiglu_oai(const float* g, const float* u, float alpha, float limit, float* out, int n) {
  for (int i = 0; i < n; i++) {
    const float x = std::min(g[i], limit), y = std::min(std::max(u[i], -limit), limit);
    out[i] = x / (1.f + expf(alpha * (-x))) * (y + 1.f);
  }
}

// Chunk bytes for one pass over `passBytes` of weights when no expert has more than `maxTokens`
// tokens. Decode: >= 8 tasks per thread (balance; a short tail when a thread is slowed) of
// 32..256 KiB (measured on olmoe / qwen1.5 decode: 1.2x the bandwidth of fixed 48 KiB chunks).
size_t chunk_target(size_t passBytes, int maxTokens, int threads) {
  if (maxTokens > 4) return 192u << 10;
  return std::min<size_t>(256u << 10, std::max<size_t>(32u << 10, passBytes / (8 * (size_t)threads)));
}

// Rows a chunk is a multiple of: the panels of a many-token pass, and always a re-laid Q4_K
// matrix's 16-row panels
int cut_unit(const KernelTable* K, int maxTokens, int typeA, int typeB) {
  const int unit = maxTokens > 4 ? K->panel_rows : 1;
  return typeA == T_Q4_K_R16 || typeB == T_Q4_K_R16 ? std::max(unit, Q4KR_ROWS) : unit;
}

}  // namespace

void expert_ffn(const KernelTable* K, ThreadPool& P, const ExpertFfnArgs& a) {
  const int d = a.d, ff = a.ff, nE = a.nExpert, nSlot = a.offsets[nE];
  if (a.nTok == 0) return;
  if (nSlot == 0) { if (!a.accumulate && !a.slotOut) memset(a.out, 0, (size_t)a.nTok * d * 4); return; }

  // (0) each token once per activation kind any gate/up weight needs
  const uint8_t* actX[3] = {nullptr, nullptr, nullptr};
  size_t strideX[3] = {0, 0, 0};
  bool need[3] = {false, false, false};
  for (int e = 0; e < nE; e++) for (int m = 0; m < 2; m++) need[K->act_kind(a.types[3 * e + m])] = true;
  for (int k = 0; k < 3; k++) {
    if (!need[k]) continue;
    if (k == ACT_F32) { actX[k] = (const uint8_t*)a.x; strideX[k] = (size_t)d * 4; continue; }
    const ActLayout L = act_layout(k, d);
    uint8_t* q = gActX[k].get(L.stride * a.nTok);
    auto fn = [&](int t, int) { K->quantize_act(k, a.x + (size_t)t * d, d, q + L.stride * t); };
    if (a.nTok < 4) for (int t = 0; t < a.nTok; t++) fn(t, 0);
    else P.run(a.nTok, fn);
    actX[k] = q; strideX[k] = L.stride;
  }

  // (1) gate, up and silu-mul; h[slot, ff] lands in the gate buffer
  float* G = (float*)gGate.get((size_t)nSlot * ff * 4);
  float* U = (float*)gUp.get((size_t)nSlot * ff * 4);
  std::vector<Task> tasks;
  int maxN = 0;
  size_t passBytes = 0;
  for (int e = 0; e < nE; e++) {
    const int n = a.offsets[e + 1] - a.offsets[e];
    maxN = std::max(maxN, n);
    if (n > 0) passBytes += (type_row_bytes(a.types[3 * e], d) + type_row_bytes(a.types[3 * e + 1], d)) * ff;
  }
  size_t target = chunk_target(passBytes, maxN, P.size());
  for (int e = 0; e < nE; e++) {
    const int n = a.offsets[e + 1] - a.offsets[e];
    if (n > 0) chunk_rows(tasks, e, ff, target, type_row_bytes(a.types[3 * e], d), 2, cut_unit(K, maxN, a.types[3 * e], a.types[3 * e + 1]));
  }
  const int nGateUp = (int)tasks.size();
  auto gateUp = [&](const Task& tk) {
    const int s0 = a.offsets[tk.e], n = a.offsets[tk.e + 1] - s0;
    for (int m = 0; m < 2; m++) {
      const int type = a.types[3 * tk.e + m], kind = K->act_kind(type);
      MatmulArgs ma;
      ma.type = type; ma.w = a.w[3 * tk.e + m]; ma.rowBytes = type_row_bytes(type, d); ma.rows = ff; ma.cols = d; ma.nTok = n;
      ma.act = actX[kind]; ma.actStride = strideX[kind]; ma.actIdx = a.tokens + s0;
      ma.out = (m == 0 ? G : U) + (size_t)s0 * ff;
      K->matmul_rows(ma, tk.r0, tk.r1);
    }
    const float* gb = a.bias ? a.bias[3 * tk.e] : nullptr;
    const float* ub = a.bias ? a.bias[3 * tk.e + 1] : nullptr;
    for (int s = s0; s < s0 + n; s++) {
      float* g = G + (size_t)s * ff + tk.r0;
      float* u = U + (size_t)s * ff + tk.r0;
      const int nr = tk.r1 - tk.r0;
      if (gb) for (int r = 0; r < nr; r++) g[r] += gb[tk.r0 + r];
      if (ub) for (int r = 0; r < nr; r++) u[r] += ub[tk.r0 + r];
      if (a.glu == GLU_SWIGLU) K->silu_mul(g, u, g, (size_t)nr);
      else swiglu_oai(g, u, a.alpha, a.limit, g, nr);
    }
  };

  // (2) quantize h per slot for its expert's down weight, then down rows
  std::vector<size_t> baseH(nE + 1, 0), strideH(nE, 0);
  for (int e = 0; e < nE; e++) {
    const int kind = K->act_kind(a.types[3 * e + 2]);
    strideH[e] = kind == ACT_F32 ? (size_t)ff * 4 : act_layout(kind, ff).stride;
    baseH[e + 1] = baseH[e] + strideH[e] * (size_t)(a.offsets[e + 1] - a.offsets[e]);
  }
  uint8_t* H = gActH.get(baseH[nE]);
  std::vector<int> slotExpert(nSlot);
  for (int e = 0; e < nE; e++) for (int s = a.offsets[e]; s < a.offsets[e + 1]; s++) slotExpert[s] = e;
  auto quant = [&](int s, int) {
    const int e = slotExpert[s];
    K->quantize_act(K->act_kind(a.types[3 * e + 2]), G + (size_t)s * ff, ff, H + baseH[e] + strideH[e] * (size_t)(s - a.offsets[e]));
  };

  float* Y = a.slotOut ? a.slotOut : (float*)gY.get((size_t)nSlot * d * 4);
  passBytes = 0;
  for (int e = 0; e < nE; e++) if (a.offsets[e + 1] > a.offsets[e]) passBytes += type_row_bytes(a.types[3 * e + 2], ff) * d;
  target = chunk_target(passBytes, maxN, P.size());
  for (int e = 0; e < nE; e++) {
    const int n = a.offsets[e + 1] - a.offsets[e];
    if (n > 0) chunk_rows(tasks, e, d, target, type_row_bytes(a.types[3 * e + 2], ff), 1, cut_unit(K, maxN, a.types[3 * e + 2], a.types[3 * e + 2]));
  }
  auto down = [&](const Task& tk) {
    const int s0 = a.offsets[tk.e], n = a.offsets[tk.e + 1] - s0;
    MatmulArgs ma;
    ma.type = a.types[3 * tk.e + 2]; ma.w = a.w[3 * tk.e + 2]; ma.rowBytes = type_row_bytes(ma.type, ff);
    ma.rows = d; ma.cols = ff; ma.nTok = n; ma.act = H + baseH[tk.e]; ma.actStride = strideH[tk.e];
    ma.out = Y + (size_t)s0 * d;
    K->matmul_rows(ma, tk.r0, tk.r1);
    if (const float* db = a.bias ? a.bias[3 * tk.e + 2] : nullptr) {
      for (int s = 0; s < n; s++) {
        float* y = Y + (size_t)(s0 + s) * d;
        for (int r = tk.r0; r < tk.r1; r++) y[r] += db[r];
      }
    }
  };

  // MOIRA_EXPERT_FFN_TWO_PASS=1 keeps decode on the two-run path (A/B of the fused run)
  static const bool twoPass = getenv("MOIRA_EXPERT_FFN_TWO_PASS") != nullptr;
  if (a.nTok < 4 && !twoPass) {
    // Decode: one pool run for both passes. Tasks are claimed in index order, gate/up chunks first;
    // whoever finishes an expert's last gate/up chunk quantizes its h and marks it ready, and a down
    // chunk waits (spins) for its expert's mark, which by then is almost always set: one barrier
    // per layer instead of two, and no thread idles at the end of the gate/up pass.
    std::unique_ptr<std::atomic<int>[]> left(new std::atomic<int>[nE]);
    for (int e = 0; e < nE; e++) left[e].store(0, std::memory_order_relaxed);
    for (int i = 0; i < nGateUp; i++) left[tasks[i].e].fetch_add(1, std::memory_order_relaxed);
    // ready when left[e] reaches -1: the last chunk's thread takes it from 1 to 0, quantizes, then -1
    P.run((int)tasks.size(), [&](int i, int) {
      const Task& tk = tasks[i];
      if (i < nGateUp) {
        gateUp(tk);
        if (left[tk.e].fetch_sub(1, std::memory_order_acq_rel) == 1) {
          for (int s = a.offsets[tk.e]; s < a.offsets[tk.e + 1]; s++) quant(s, 0);
          left[tk.e].store(-1, std::memory_order_release);
        }
      } else {
        for (int spins = 0; left[tk.e].load(std::memory_order_acquire) != -1;) ThreadPool::backoff(spins);
        down(tk);
      }
    });
  } else {
    P.run(nGateUp, [&](int i, int) { gateUp(tasks[i]); });
    if (nSlot < 4) for (int s = 0; s < nSlot; s++) quant(s, 0);
    else P.run(nSlot, quant);
    P.run((int)tasks.size() - nGateUp, [&](int i, int) { down(tasks[nGateUp + i]); });
  }
  if (a.slotOut) return;

  // (3) out[t] = sum of w * y over t's slots in slot order, each step rounded like the JavaScript
  // `out[i] += w * y` it replaces (exact product, f64 add, f32 store)
  std::vector<int> start(a.nTok + 1, 0), order(nSlot);
  for (int s = 0; s < nSlot; s++) start[a.tokens[s] + 1]++;
  for (int t = 0; t < a.nTok; t++) start[t + 1] += start[t];
  {
    std::vector<int> fill(start.begin(), start.end() - 1);
    for (int s = 0; s < nSlot; s++) order[fill[a.tokens[s]]++] = s;
  }
  auto sum = [&](int t, int) {
    float* o = a.out + (size_t)t * d;
    if (!a.accumulate) for (int c = 0; c < d; c++) o[c] = 0;
    for (int j = start[t]; j < start[t + 1]; j++) {
      const int s = order[j];
      const double w = a.weights[s];
      const float* y = Y + (size_t)s * d;
      for (int c = 0; c < d; c++) o[c] = (float)((double)o[c] + w * (double)y[c]);
    }
  };
  if (a.nTok < 8) for (int t = 0; t < a.nTok; t++) sum(t, 0);
  else P.run(a.nTok, sum);
}

}  // namespace moira
