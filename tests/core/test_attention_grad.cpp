// The gated-attention CPU reference in soft mode (kernels/cpu/attention_ref.h), forward and backward, against
// the model's own masked attention (make_attention_mask, gate_bias) in float64 with torch autograd: packed
// documents, the SP-KV window, keep_first and log(u) gate biases, some of them -inf. It is the contract that
// the GPU training path implements, and the specification its *_CUDA tests compare against. Also the
// kernels' bf16 rounding against LibTorch's.
#include <gtest/gtest.h>

#include <cmath>

#include "core/model/gating.h"
#include "kernels/bf16.h"
#include "kernels/cpu/attention_fast.h"
#include "kernels/cpu/attention_ref.h"

namespace spkv {
namespace {

double max_rel(const torch::Tensor& got, const torch::Tensor& want) {
  return ((got.to(torch::kFloat64) - want).abs().max() / want.abs().max()).item<double>();
}

TEST(AttentionGradRef, SoftGatesMatchTheModelsMaskedAttentionAndItsAutograd) {
  ModelConfig c;
  c.spkv.enabled = true, c.spkv.window = 4, c.spkv.keep_first = 2;
  const int64_t B = 2, H = 6, Hkv = 2, G = H / Hkv, T = 37, D = 5;
  torch::manual_seed(3);
  // Row 0: one document. Row 1: documents of 10, 1 and 26 tokens.
  auto segments = torch::zeros({B, T}, torch::kInt64);
  segments[1].narrow(0, 10, 1).fill_(1);
  segments[1].narrow(0, 11, T - 11).fill_(2);
  const AttentionMask mask = make_attention_mask(c, T, segments, torch::kCPU);

  auto f32 = torch::kFloat32;
  auto q = torch::randn({B, H, T, D}, f32), k = torch::randn({B, Hkv, T, D}, f32), v = torch::randn({B, Hkv, T, D}, f32);
  auto u = torch::rand({B, T, Hkv}, f32);
  GateSettings soft;
  soft.mode = GateMode::soft;
  auto fb = gate_bias(u, soft, true).view({B, Hkv, T});  // log(u + 1e-8)
  fb.index_put_({0, 1, torch::indexing::Slice(3, 20, 4)}, -INFINITY);  // a few closed gates
  // The caller's part of the contract: keys at document positions < keep_first carry no gate bias (nor
  // receive its gradient).
  auto first = (mask.positions < c.spkv.keep_first).unsqueeze(1);  // (B, 1, S)
  auto fb_k = torch::where(first, torch::zeros_like(fb), fb).contiguous();
  auto dy = torch::randn({B, H, T, D}, f32);

  // The model's formula in float64, differentiated by torch.
  auto q64 = q.to(torch::kFloat64).requires_grad_(), k64 = k.to(torch::kFloat64).requires_grad_();
  auto v64 = v.to(torch::kFloat64).requires_grad_(), fb64 = fb.to(torch::kFloat64).requires_grad_();
  auto bias = torch::where(mask.far, fb64.view({B, Hkv, 1, 1, T}), mask.bias.to(torch::kFloat64));  // (B, Hkv, 1, T, S)
  auto scores = torch::matmul(q64.view({B, Hkv, G, T, D}), k64.unsqueeze(2).transpose(-2, -1)) / std::sqrt(double(D)) + bias;
  auto lse = scores.logsumexp(-1).view({B, H, T});                                           // (B, H, T)
  auto y = torch::matmul(torch::softmax(scores, -1), v64.unsqueeze(2)).view({B, H, T, D});  // (B, H, T, D)
  (y * dy.to(torch::kFloat64)).sum().backward();

  // The reference kernel on the float32 tensors.
  auto idx = torch::arange(T, torch::kInt64);
  auto k_begin = std::get<0>(torch::where(mask.positions == 0, idx.unsqueeze(0), torch::zeros_like(segments)).cummax(1))
                     .contiguous();  // (B, T) first key of each query's document
  auto y_k = torch::full({B, H, T, D}, NAN, f32), lse_k = torch::full({B, H, T}, NAN, f32);
  auto dq_k = torch::full_like(q, NAN), dk_k = torch::full_like(k, NAN), dv_k = torch::full_like(v, NAN);
  auto dfb_k = torch::full_like(fb_k, NAN);
  kernels::GatedAttentionGradParams g;
  kernels::GatedAttentionParams& p = g.fwd;
  p.q = q.data_ptr<float>(), p.k = k.data_ptr<float>(), p.v = v.data_ptr<float>(), p.y = y_k.data_ptr<float>();
  p.q_pos = p.k_pos = idx.data_ptr<int64_t>(), p.k_begin = k_begin.data_ptr<int64_t>();
  p.far_bias = fb_k.data_ptr<float>(), p.lse = lse_k.data_ptr<float>();
  p.B = B, p.H = H, p.Hkv = Hkv, p.T = T, p.S = T, p.D = D, p.window = c.spkv.window, p.scale = float(1 / std::sqrt(double(D)));
  kernels::set_contiguous_strides(p);
  ASSERT_EQ(kernels::cpu::gated_attention_ref(p), kernels::Status::ok);
  g.dy = dy.data_ptr<float>(), g.dq = dq_k.data_ptr<float>(), g.dk = dk_k.data_ptr<float>(), g.dv = dv_k.data_ptr<float>();
  g.d_far_bias = dfb_k.data_ptr<float>();
  ASSERT_EQ(kernels::cpu::gated_attention_backward_ref(g), kernels::Status::ok);

  EXPECT_LT(max_rel(y_k, y.detach()), 1e-6);
  EXPECT_LT(max_rel(lse_k, lse.detach()), 1e-6);
  EXPECT_LT(max_rel(dq_k, q64.grad()), 1e-6);
  EXPECT_LT(max_rel(dk_k, k64.grad()), 1e-6);
  EXPECT_LT(max_rel(dv_k, v64.grad()), 1e-6);
  EXPECT_LT(max_rel(torch::where(first, torch::zeros_like(dfb_k), dfb_k), fb64.grad()), 1e-6);
  // The gate gradient is not trivial: open far gates get one, keep_first and closed ones get none.
  EXPECT_GT(fb64.grad().abs().max().item<double>(), 1e-3);
  EXPECT_EQ(dfb_k[0][1][3].item<float>(), 0.f);
  EXPECT_EQ(fb64.grad()[1][0][11].item<double>(), 0.0);  // the first token of row 1's last document (keep_first)
  EXPECT_NE(dfb_k[1][0][11].item<float>(), 0.f);          // ... whose bias 0 the kernel saw as a far key's
}

TEST(AttentionGradRef, KeepAndFarBiasExcludeEachOtherAndTheFastPathSaysUnsupported) {
  float x[4] = {1, 2, 3, 4}, y[4];
  int64_t pos[2] = {0, 1};
  uint8_t keep[2] = {1, 1};
  kernels::GatedAttentionParams p;
  p.q = p.k = p.v = x, p.y = y, p.q_pos = p.k_pos = pos, p.B = 1, p.H = p.Hkv = 1, p.T = p.S = 2, p.D = 2, p.scale = 1;
  kernels::set_contiguous_strides(p);
  p.keep = keep, p.far_bias = x;
  EXPECT_EQ(kernels::cpu::gated_attention_ref(p), kernels::Status::invalid_argument);
  p.keep = nullptr;
  EXPECT_EQ(kernels::cpu::gated_attention_ref(p), kernels::Status::ok);
  EXPECT_FALSE(kernels::hard_only(p));
  EXPECT_EQ(kernels::cpu::gated_attention(p), kernels::Status::unsupported);
}

TEST(Bf16, RoundsToNearestEvenLikeLibTorch) {
  std::vector<float> xs{0.f, -0.f, 1.f, 1.f + 1.f / 256, 1.f + 3.f / 512, 1.f + 1.f / 512, -2.5e-39f, 1e-45f, 3.4e38f,
                        INFINITY, -INFINITY, 65504.f, -1.0009765625f};
  torch::manual_seed(9);
  auto r = torch::randn({4000}) * torch::pow(10.0, torch::randint(-30, 30, {4000}).to(torch::kFloat32));
  for (int64_t i = 0; i < r.size(0); ++i) xs.push_back(r[i].item<float>());
  for (float x : xs) {
    EXPECT_EQ(kernels::to_bf16(x).bits, c10::BFloat16(x).x) << x;
    EXPECT_EQ(kernels::to_float(kernels::to_bf16(x)), float(c10::BFloat16(x))) << x;
  }
  EXPECT_TRUE(std::isnan(kernels::to_float(kernels::to_bf16(NAN))));
}

}  // namespace
}  // namespace spkv
