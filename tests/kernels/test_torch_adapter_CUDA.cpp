// The LibTorch adapter (kernels/torch/: gated_attention_op.h, device_kv_cache.h) on a GPU: gated attention's autograd against torch's
// own autograd of the masked formula in float64 (soft gates, packed documents, strided q); its input checks;
// and the GPU KV cache streamed through prefill chunks and decode steps against the CPU reference over the
// whole sequence (the engine's invariant: a pruned cache gives the masked full-sequence result). Built only
// with a CUDA LibTorch; skips cleanly without a device.
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>

#include "kernels/cpu/attention_ref.h"
#include "kernels/torch/device_kv_cache.h"
#include "kernels/torch/gated_attention_op.h"

namespace spkv {
namespace {

double max_rel(const torch::Tensor& got, const torch::Tensor& want) {
  return ((got.to(torch::kFloat64).cpu() - want.cpu()).abs().max() / want.abs().max().cpu()).item<double>();
}

// Rows of dtype `rows` (the float64 reference starts from the same values); tolerances relative to the largest
// element.
void autograd_matches(torch::ScalarType rows, double tol_y, double tol_grad) {
  torch::manual_seed(5);
  const int64_t B = 2, H = 6, Hkv = 2, G = H / Hkv, T = 53, D = 40, W = 7;
  auto cuda = torch::TensorOptions().device(torch::kCUDA);
  auto r = cuda.dtype(rows);
  auto q = torch::randn({B, T, H, D}, r).transpose(1, 2).requires_grad_();  // strided (B, H, T, D)
  auto k = torch::randn({B, Hkv, T, D}, r).requires_grad_(), v = torch::randn({B, Hkv, T, D}, r).requires_grad_();
  auto fb = torch::log(torch::rand({B, Hkv, T}, cuda) + 1e-8).requires_grad_();
  auto pos = torch::arange(T, cuda.dtype(torch::kInt64));
  auto k_begin = torch::zeros({B, T}, cuda.dtype(torch::kInt64));
  k_begin[1].narrow(0, 20, T - 20).fill_(20);  // row 1: documents [0, 20) and [20, T)
  cuda_ops::Gates g;
  g.q_pos = g.k_pos = pos, g.window = W, g.far_bias = fb, g.k_begin = k_begin;
  auto y = cuda_ops::gated_attention(q, k, v, g);
  auto dy = torch::randn({B, H, T, D}, r);
  (y * dy).sum().backward();

  // The formula in float64: causal, same document, local (t - s < W) or far with bias fb.
  auto q64 = q.detach().to(torch::kFloat64).requires_grad_(), k64 = k.detach().to(torch::kFloat64).requires_grad_();
  auto v64 = v.detach().to(torch::kFloat64).requires_grad_(), fb64 = fb.detach().to(torch::kFloat64).requires_grad_();
  auto d = pos.unsqueeze(1) - pos.unsqueeze(0);                                                      // (T, S)
  auto visible = (d >= 0).unsqueeze(0) & (pos.unsqueeze(0).unsqueeze(0) >= k_begin.unsqueeze(2));    // (B, T, S)
  auto far = (d >= W).view({1, 1, 1, T, T});
  auto bias = torch::where(far, fb64.view({B, Hkv, 1, 1, T}), torch::zeros({1}, q64.options()))
                  .masked_fill(visible.logical_not().view({B, 1, 1, T, T}), -INFINITY);           // (B, Hkv, 1, T, S)
  auto scores = torch::matmul(q64.reshape({B, Hkv, G, T, D}), k64.unsqueeze(2).transpose(-2, -1)) / std::sqrt(double(D)) + bias;
  auto y64 = torch::matmul(torch::softmax(scores, -1), v64.unsqueeze(2)).view({B, H, T, D});
  (y64 * dy.to(torch::kFloat64)).sum().backward();

  EXPECT_EQ(y.scalar_type(), rows);
  EXPECT_LT(max_rel(y.detach(), y64.detach()), tol_y);
  EXPECT_LT(max_rel(q.grad(), q64.grad()), tol_grad);
  EXPECT_LT(max_rel(k.grad(), k64.grad()), tol_grad);
  EXPECT_LT(max_rel(v.grad(), v64.grad()), tol_grad);
  EXPECT_LT(max_rel(fb.grad(), fb64.grad()), tol_grad);
}

TEST(TorchAdapter_CUDA, GatedAttentionGradientsMatchTorchAutograd) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  autograd_matches(torch::kFloat32, 1e-5, 1e-4);
  autograd_matches(torch::kBFloat16, 1e-2, 2e-2);
}

TEST(TorchAdapter_CUDA, BadInputsNameTheTensor) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto cuda = torch::TensorOptions().device(torch::kCUDA);
  auto q = torch::randn({1, 2, 3, 8}, cuda), k = torch::randn({1, 1, 3, 8}, cuda);
  cuda_ops::Gates g;
  g.q_pos = g.k_pos = torch::arange(3, cuda.dtype(torch::kInt64));
  auto message = [&](const torch::Tensor& kk, const torch::Tensor& vv) {
    try {
      cuda_ops::gated_attention(q, kk, vv, g);
    } catch (const std::invalid_argument& e) {  // kernels/ throw std exceptions (gated_attention_op.h)
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(k, k.to(torch::kFloat64)).find("v must be Float (1, 1, 3, 8) on cuda"), std::string::npos);
  EXPECT_NE(message(k.cpu(), k).find("k must be Float (1, 1, 3, 8) on cuda"), std::string::npos);
  EXPECT_NE(message(torch::randn({1, 1, 4, 8}, cuda), k).find("v must be Float (1, 1, 4, 8)"), std::string::npos);
}

// Streams random q, k, v and gate decisions through the cache (prefill chunks, then decode steps) and
// compares every output with the CPU reference over all the keys so far. bf16 rows: q, k and v are bf16
// values, so only the rounding of the output is left (tolerance 1e-2 of the largest element).
void stream_matches_reference(bool keep_all, torch::ScalarType rows, double tol) {
  torch::manual_seed(keep_all ? 8 : 7);
  const int64_t B = 2, L = 2, H = 6, Hkv = 2, D = 40, W = 8, P = 5, N = 70;
  auto cuda = torch::TensorOptions().device(torch::kCUDA);
  cuda_ops::DeviceKvCache cache(B, L, Hkv, D, W, P, N, keep_all, torch::Device(torch::kCUDA), rows);
  auto rounded = [&](const torch::Tensor& x) { return x.to(rows).to(torch::kFloat32); };
  auto q = rounded(torch::randn({L, B, H, N, D})), k = rounded(torch::randn({L, B, Hkv, N, D}));
  auto v = rounded(torch::randn({L, B, Hkv, N, D}));
  auto keep = torch::rand({L, B, N, Hkv}) < 0.3;  // (L, B, N, Hkv)
  keep.select(3, 1).select(1, 0).fill_(false);     // a head that keeps nothing
  auto pos = torch::arange(N, torch::kInt64);
  for (int64_t il = 0; il < L; ++il) {
    int64_t t0 = 0;
    for (int64_t T : {23, 17, 1, 1, 9, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}) {
      cache.reserve(T);
      auto sl = [&](const torch::Tensor& x, int64_t dim) { return x[il].narrow(dim, t0, T); };
      auto y = cache.attend(il, sl(q, 2).to(torch::kCUDA), sl(k, 2).to(torch::kCUDA), sl(v, 2).to(torch::kCUDA),
                            sl(keep, 1).to(torch::kCUDA)).cpu();
      // The reference: the chunk's queries over keys 0 .. t0 + T - 1, window W, the gates' decisions.
      auto want = torch::full({B, H, T, D}, NAN);
      auto qc = sl(q, 2).contiguous(), kc = k[il].narrow(2, 0, t0 + T).contiguous(), vc = v[il].narrow(2, 0, t0 + T).contiguous();
      auto kept = (keep_all ? torch::ones({B, t0 + T, Hkv}, torch::kBool) : keep[il].narrow(1, 0, t0 + T))
                      .transpose(1, 2).contiguous().to(torch::kUInt8);  // (B, Hkv, S)
      auto qp = pos.narrow(0, t0, T).contiguous();
      kernels::GatedAttentionParams p;
      p.B = B, p.H = H, p.Hkv = Hkv, p.T = T, p.S = t0 + T, p.D = D, p.window = W, p.scale = float(1 / std::sqrt(double(D)));
      p.q = qc.data_ptr<float>(), p.k = kc.data_ptr<float>(), p.v = vc.data_ptr<float>(), p.y = want.data_ptr<float>();
      p.keep = kept.data_ptr<uint8_t>(), p.q_pos = qp.data_ptr<int64_t>(), p.k_pos = pos.data_ptr<int64_t>();
      kernels::set_contiguous_strides(p);
      ASSERT_EQ(kernels::cpu::gated_attention_ref(p), kernels::Status::ok);
      EXPECT_EQ(y.scalar_type(), torch::kFloat32);
      EXPECT_LT(max_rel(y, want.to(torch::kFloat64)), tol) << "layer " << il << " tokens " << t0 << " + " << T;
      t0 += T;
    }
    EXPECT_EQ(cache.length(il), t0);
  }
  // Entries per head: the ring (W) plus the kept tokens that left it.
  const auto entries = cache.entries();
  for (int64_t il = 0; il < L; ++il)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t hk = 0; hk < Hkv; ++hk) {
        const int64_t left = cache.length(il) - W;
        const int64_t kept = keep_all ? left : keep[il][b].narrow(0, 0, left).select(1, hk).sum().item<int64_t>();
        EXPECT_EQ(entries[(il * B + b) * Hkv + hk], W + kept) << il << " " << b << " " << hk;
      }
  // Bytes: K and V of the rings and of the pages handed out (one per P stored tokens of a head), in the rows' dtype.
  int64_t pages = 0;
  for (int64_t e : entries) pages += (e - W + P - 1) / P;
  const int64_t row_bytes = rows == torch::kFloat32 ? 4 : 2;
  EXPECT_EQ(cache.bytes_used(), 2 * (L * B * Hkv * W + pages * P) * D * row_bytes);
  EXPECT_GE(cache.bytes_reserved(), cache.bytes_used());
}

TEST(TorchAdapter_CUDA, DeviceCacheStreamMatchesTheFullSequenceReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  stream_matches_reference(false, torch::kFloat32, 2e-5);
  stream_matches_reference(true, torch::kFloat32, 2e-5);
}

TEST(TorchAdapter_CUDA, Bf16DeviceCacheStreamMatchesTheFullSequenceReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  stream_matches_reference(false, torch::kBFloat16, 1e-2);
  stream_matches_reference(true, torch::kBFloat16, 1e-2);
}

}  // namespace
}  // namespace spkv
