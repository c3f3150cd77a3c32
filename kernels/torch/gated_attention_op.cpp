// The gated-attention autograd op (gated_attention_op.h): the forward and backward launches and the
// argument checks.
#include "kernels/torch/gated_attention_op.h"

#include <c10/cuda/CUDAGuard.h>

#include "kernels/cuda/prefill.h"
#include "kernels/torch/tensor_checks.h"

namespace spkv::cuda_ops {
namespace {

using namespace detail;
using torch::Tensor;

std::pair<Tensor, Tensor> launch_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& q_pos, const Tensor& k_pos,
                                  int64_t window, const Tensor& keep, const Tensor& far_bias, const Tensor& k_begin) {
  return q.scalar_type() == torch::kBFloat16 ? forward_rows<kernels::bf16>(q, k, v, q_pos, k_pos, window, keep, far_bias, k_begin)
                                             : forward_rows<float>(q, k, v, q_pos, k_pos, window, keep, far_bias, k_begin);
}

// dq, dk, dv (the strides of q, k, v) and d_far_bias from the saved forward and dy.
template <class Row>
torch::autograd::tensor_list backward_rows(const torch::autograd::variable_list& s, const Tensor& dy_in, int64_t window) {
  const Tensor &q = s[0], &k = s[1], &v = s[2], &far_bias = s[3], &y = s[8], &lse = s[9];
  auto dy = dy_in.contiguous();  // y is contiguous; dy takes its strides
  auto like = [](const Tensor& t) { return torch::empty_strided(t.sizes(), t.strides(), t.options()); };
  Tensor dq = like(q), dk = like(k), dv = like(v), dfb = far_bias.defined() ? like(far_bias) : Tensor();
  auto delta = torch::empty_like(lse);
  kernels::GatedAttentionGradParamsT<Row> g;
  g.fwd = params<Row>(q, k, v, s[4], s[5], window, s[6], far_bias, s[7]);
  g.fwd.y = rows<Row>(y), g.fwd.y_sb = y.stride(0), g.fwd.y_sh = y.stride(1), g.fwd.y_st = y.stride(2);
  g.fwd.lse = lse.data_ptr<float>();
  g.dy = rows<Row>(dy), g.dq = rows<Row>(dq), g.dk = rows<Row>(dk), g.dv = rows<Row>(dv);
  g.d_far_bias = dfb.defined() ? dfb.data_ptr<float>() : nullptr;
  g.delta = delta.data_ptr<float>();
  check(kernels::cuda::gated_attention_backward(g, stream_of(q.device())), "gated attention backward");
  return {dq, dk, dv, dfb, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
}

struct GatedAttentionFunction : torch::autograd::Function<GatedAttentionFunction> {
  // The gates that may be absent are optionals: autograd records no input for an absent one (LibTorch 2 rejects
  // an undefined Tensor argument).
  static Tensor forward(torch::autograd::AutogradContext* ctx, Tensor q, Tensor k, Tensor v, c10::optional<Tensor> far_bias_in,
                        Tensor q_pos, Tensor k_pos, c10::optional<Tensor> keep_in, c10::optional<Tensor> k_begin_in, int64_t window) {
    const Tensor far_bias = far_bias_in.value_or(Tensor()), keep = keep_in.value_or(Tensor()), k_begin = k_begin_in.value_or(Tensor());
    auto [y, lse] = launch_forward(q, k, v, q_pos, k_pos, window, keep, far_bias, k_begin);
    ctx->save_for_backward({q, k, v, far_bias, q_pos, k_pos, keep, k_begin, y, lse});
    ctx->saved_data["window"] = window;
    return y;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grad) {
    const auto s = ctx->get_saved_variables();
    c10::cuda::CUDAGuard guard(s[0].device());
    const int64_t window = ctx->saved_data["window"].toInt();
    return s[0].scalar_type() == torch::kBFloat16 ? backward_rows<kernels::bf16>(s, grad[0].to(torch::kBFloat16), window)
                                                  : backward_rows<float>(s, grad[0], window);
  }
};

}  // namespace

Tensor gated_attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Gates& g) {
  constexpr const char* where = "cuda gated_attention";
  if (!q_in.defined() || q_in.dim() != 4 || !q_in.is_cuda())
    throw std::invalid_argument(std::string(where) + ": q must be a (B, H, T, D) CUDA tensor, got " +
                     (q_in.defined() ? describe(q_in.scalar_type(), q_in.sizes(), q_in.device()) : "no tensor"));
  const torch::Device dev = q_in.device();
  const int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2), D = q_in.size(3);
  const int64_t Hkv = k_in.defined() && k_in.dim() == 4 ? k_in.size(1) : 0, S = Hkv ? k_in.size(2) : 0;
  const auto rows_type = q_in.scalar_type() == torch::kBFloat16 ? torch::kBFloat16 : torch::kFloat32;  // rows: one of the two
  expect(where, "q", q_in, {B, H, T, D}, rows_type, dev);
  expect(where, "k", k_in, {B, Hkv, S, D}, rows_type, dev);
  expect(where, "v", v_in, {B, Hkv, S, D}, rows_type, dev);
  if (Hkv == 0 || H % Hkv != 0)
    throw std::invalid_argument(std::string(where) + ": q's " + std::to_string(H) + " heads are not a multiple of k's " + std::to_string(Hkv));
  expect(where, "q_pos", g.q_pos, {T}, torch::kInt64, dev);
  expect(where, "k_pos", g.k_pos, {S}, torch::kInt64, dev);
  if (g.keep.defined() && g.far_bias.defined()) throw std::invalid_argument(std::string(where) + ": keep and far_bias exclude each other");
  if (g.keep.defined()) expect(where, "keep", g.keep, {B, Hkv, S}, g.keep.scalar_type() == torch::kBool ? torch::kBool : torch::kUInt8, dev);
  if (g.far_bias.defined()) expect(where, "far_bias", g.far_bias, {B, Hkv, S}, torch::kFloat32, dev);
  if (g.k_begin.defined()) expect(where, "k_begin", g.k_begin, {B, T}, torch::kInt64, dev);
  c10::cuda::CUDAGuard guard(dev);
  auto optional = [](const Tensor& t) { return t.defined() ? c10::optional<Tensor>(t) : c10::nullopt; };
  return GatedAttentionFunction::apply(prepared(q_in), prepared(k_in), prepared(v_in), optional(prepared(g.far_bias)),
                                       g.q_pos.contiguous(), g.k_pos.contiguous(), optional(prepared(g.keep)),
                                       optional(g.k_begin.defined() ? g.k_begin.contiguous() : Tensor()), g.window);
}

}  // namespace spkv::cuda_ops
