// The attention mask of one forward call, and the gate bias of each mode.
#include "core/model/gating.h"

#include <cmath>
#include <limits>

namespace spkv {

namespace {
constexpr double kLogEps = 1e-8;  // bias = log(u + 1e-8), as in the method
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
}  // namespace

AttentionMask make_attention_mask(const ModelConfig& c, int64_t T, const torch::Tensor& segments,
                                  const torch::Device& device) {
  auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(device);
  auto idx = torch::arange(T, i64);                      // (T)
  auto d = idx.unsqueeze(1) - idx.unsqueeze(0);          // (T, S): t - s
  auto visible = (d >= 0).unsqueeze(0);                  // (1, T, S)
  if (c.sliding_window > 0) visible = visible & (d < c.sliding_window).unsqueeze(0);
  AttentionMask m;
  if (segments.defined()) {
    auto seg = segments.to(device);                                                        // (B, T)
    visible = visible & (seg.unsqueeze(2) == seg.unsqueeze(1));                             // (B, T, S)
    auto is_start = torch::ones_like(seg, torch::kBool);
    is_start.narrow(1, 1, T - 1).copy_(seg.narrow(1, 1, T - 1) != seg.narrow(1, 0, T - 1));
    auto start = std::get<0>(torch::where(is_start, idx.unsqueeze(0), torch::zeros_like(seg)).cummax(1));
    m.positions = idx.unsqueeze(0) - start;                                                // (B, T)
    m.k_begin = start.contiguous();                                                        // (B, T)
  } else {
    m.positions = idx.unsqueeze(0);  // (1, T)
  }
  m.bias = torch::zeros(visible.sizes(), torch::TensorOptions().dtype(torch::kFloat32).device(device))
               .masked_fill(visible.logical_not(), kNegInf)
               .unsqueeze(1)
               .unsqueeze(1);  // (B|1, 1, 1, T, S)
  m.index = idx;
  if (c.spkv.enabled) {
    if (c.spkv.keep_first > 0) m.first = m.positions < c.spkv.keep_first;  // (B|1, S)
    auto far = visible & (d >= c.spkv.window).unsqueeze(0);                 // (B|1, T, S)
    if (c.spkv.keep_first > 0) far = far & (m.positions >= c.spkv.keep_first).unsqueeze(1);
    m.evictable = far.any(1);                                               // (B|1, S)
    m.far = far.unsqueeze(1).unsqueeze(1);                                  // (B|1, 1, 1, T, S)
  }
  return m;
}

torch::Tensor gate_bias(const torch::Tensor& u, const GateSettings& g, bool training) {
  auto ut = u.transpose(1, 2);  // (B, Hkv, S)
  torch::Tensor b;
  switch (g.mode) {
    case GateMode::soft:
      b = torch::log(ut + kLogEps);
      break;
    case GateMode::annealed: {
      auto hard = (ut >= g.tau).to(ut.dtype());
      b = torch::log((1.0 - g.anneal) * ut + g.anneal * hard + kLogEps);
      break;
    }
    case GateMode::ste:
      if (training) {
        auto z = torch::bernoulli(ut.detach());
        auto logu = torch::log(ut + kLogEps);
        // Forward: 0 for sampled-open gates, -inf for closed; backward: d/du of log u.
        b = torch::zeros_like(ut).masked_fill(z == 0, kNegInf) + (logu - logu.detach());
        break;
      }
      [[fallthrough]];
    case GateMode::hard:
    case GateMode::dense:
      b = torch::zeros_like(ut).masked_fill(ut < g.tau, kNegInf);
      break;
  }
  return b.unsqueeze(2).unsqueeze(2);  // (B, Hkv, 1, 1, S)
}

torch::Tensor count_kept(const torch::Tensor& u, const torch::Tensor& evictable, double tau) {
  auto ev = evictable.unsqueeze(2).expand({u.size(0), u.size(1), u.size(2)});   // (B, S, Hkv)
  auto kept = ((u.detach() >= tau) & ev).sum(at::IntArrayRef{0, 1});           // (Hkv)
  auto total = ev.sum(at::IntArrayRef{0, 1});                                   // (Hkv)
  return torch::stack(std::vector<torch::Tensor>{kept, total}, 1).to(torch::kCPU);  // (Hkv, 2)
}

}  // namespace spkv
