// The LibTorch adapter of the CUDA kernels (cuda_adapter.h): checks, the autograd function of gated
// attention, and the GPU KV cache. Everything runs on the current CUDA stream of the tensors' device.
#include "kernels/torch/cuda_adapter.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <type_traits>

#include "core/errors.h"
#include "kernels/cuda/decode.h"
#include "kernels/cuda/prefill.h"

namespace spkv::cuda_ops {
namespace {

using torch::Tensor;
constexpr int64_t kFar = -(int64_t(1) << 40);    // store keys in a gathered prefill: far behind every query
constexpr int64_t kFuture = int64_t(1) << 40;     // an unused ring slot: after every query

std::string describe(torch::ScalarType dtype, at::IntArrayRef shape, const torch::Device& device) {
  std::ostringstream s;
  s << c10::toString(dtype) << " (";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << ") on " << device.str();
  return s.str();
}

// t must have this dtype, shape and device; the message names the tensor and says what was expected.
void expect(const char* where, const char* name, const Tensor& t, std::vector<int64_t> shape, torch::ScalarType dtype,
            const torch::Device& device) {
  if (t.defined() && t.sizes() == at::IntArrayRef(shape) && t.scalar_type() == dtype && t.device() == device) return;
  throw InputError(std::string(where) + ": " + name + " must be " + describe(dtype, shape, device) + ", got " +
                   (t.defined() ? describe(t.scalar_type(), t.sizes(), t.device()) : std::string("no tensor")));
}

// The kernels read the last dimension contiguously and write gradients with their input's strides.
Tensor prepared(const Tensor& t) {
  if (!t.defined()) return t;
  return t.stride(-1) == 1 && t.is_non_overlapping_and_dense() ? t : t.contiguous();
}

void check(kernels::Status s, const char* what) {
  if (s != kernels::Status::ok) throw Error(std::string("cuda ") + what + ": " + kernels::to_string(s));
}

cudaStream_t stream_of(const torch::Device& d) { return c10::cuda::getCurrentCUDAStream(d.index()).stream(); }

// The kernels' row type for a float32 or bfloat16 tensor (at::BFloat16 and kernels::bf16 are the same 16 bits).
template <class Row>
Row* rows(const Tensor& t) {
  if constexpr (std::is_same_v<Row, float>) return t.data_ptr<float>();
  else return reinterpret_cast<Row*>(t.data_ptr<at::BFloat16>());
}

template <class Row>
kernels::GatedAttentionParamsT<Row> params(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& q_pos,
                                           const Tensor& k_pos, int64_t window, const Tensor& keep, const Tensor& far_bias,
                                           const Tensor& k_begin) {
  kernels::GatedAttentionParamsT<Row> p;
  p.B = q.size(0), p.H = q.size(1), p.T = q.size(2), p.D = q.size(3), p.Hkv = k.size(1), p.S = k.size(2);
  p.window = window, p.scale = float(1.0 / std::sqrt(double(p.D)));
  p.q = rows<Row>(q), p.k = rows<Row>(k), p.v = rows<Row>(v);
  p.q_pos = q_pos.data_ptr<int64_t>(), p.k_pos = k_pos.data_ptr<int64_t>();
  p.q_sb = q.stride(0), p.q_sh = q.stride(1), p.q_st = q.stride(2);
  p.k_sb = k.stride(0), p.k_sh = k.stride(1), p.k_st = k.stride(2);
  p.v_sb = v.stride(0), p.v_sh = v.stride(1), p.v_st = v.stride(2);
  if (keep.defined()) {
    p.keep = static_cast<const uint8_t*>(keep.data_ptr()), p.keep_sb = keep.stride(0), p.keep_sh = keep.stride(1);
  }
  if (far_bias.defined()) {
    p.far_bias = far_bias.data_ptr<float>(), p.bias_sb = far_bias.stride(0), p.bias_sh = far_bias.stride(1);
  }
  if (k_begin.defined()) p.k_begin = k_begin.data_ptr<int64_t>();
  return p;
}

// y (B, H, T, D) contiguous and lse (B, H, T) float32 from the forward kernel.
template <class Row>
std::pair<Tensor, Tensor> forward_rows(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& q_pos,
                                       const Tensor& k_pos, int64_t window, const Tensor& keep, const Tensor& far_bias,
                                       const Tensor& k_begin) {
  auto y = torch::empty(q.sizes(), q.options().memory_format(torch::MemoryFormat::Contiguous));
  auto lse = torch::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(torch::kFloat32));
  auto p = params<Row>(q, k, v, q_pos, k_pos, window, keep, far_bias, k_begin);
  p.y = rows<Row>(y), p.y_sb = y.stride(0), p.y_sh = y.stride(1), p.y_st = y.stride(2);
  p.lse = lse.data_ptr<float>();
  check(kernels::cuda::gated_attention(p, stream_of(q.device())), "gated attention");
  return {y, lse};
}

std::pair<Tensor, Tensor> forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& q_pos, const Tensor& k_pos,
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
  static Tensor forward(torch::autograd::AutogradContext* ctx, Tensor q, Tensor k, Tensor v, Tensor far_bias, Tensor q_pos,
                        Tensor k_pos, Tensor keep, Tensor k_begin, int64_t window) {
    auto [y, lse] = cuda_ops::forward(q, k, v, q_pos, k_pos, window, keep, far_bias, k_begin);
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
    throw InputError(std::string(where) + ": q must be a (B, H, T, D) CUDA tensor, got " +
                     (q_in.defined() ? describe(q_in.scalar_type(), q_in.sizes(), q_in.device()) : "no tensor"));
  const torch::Device dev = q_in.device();
  const int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2), D = q_in.size(3);
  const int64_t Hkv = k_in.defined() && k_in.dim() == 4 ? k_in.size(1) : 0, S = Hkv ? k_in.size(2) : 0;
  const auto rows_type = q_in.scalar_type() == torch::kBFloat16 ? torch::kBFloat16 : torch::kFloat32;  // rows: one of the two
  expect(where, "q", q_in, {B, H, T, D}, rows_type, dev);
  expect(where, "k", k_in, {B, Hkv, S, D}, rows_type, dev);
  expect(where, "v", v_in, {B, Hkv, S, D}, rows_type, dev);
  if (Hkv == 0 || H % Hkv != 0)
    throw InputError(std::string(where) + ": q's " + std::to_string(H) + " heads are not a multiple of k's " + std::to_string(Hkv));
  expect(where, "q_pos", g.q_pos, {T}, torch::kInt64, dev);
  expect(where, "k_pos", g.k_pos, {S}, torch::kInt64, dev);
  if (g.keep.defined() && g.far_bias.defined()) throw InputError(std::string(where) + ": keep and far_bias exclude each other");
  if (g.keep.defined()) expect(where, "keep", g.keep, {B, Hkv, S}, g.keep.scalar_type() == torch::kBool ? torch::kBool : torch::kUInt8, dev);
  if (g.far_bias.defined()) expect(where, "far_bias", g.far_bias, {B, Hkv, S}, torch::kFloat32, dev);
  if (g.k_begin.defined()) expect(where, "k_begin", g.k_begin, {B, T}, torch::kInt64, dev);
  c10::cuda::CUDAGuard guard(dev);
  return GatedAttentionFunction::apply(prepared(q_in), prepared(k_in), prepared(v_in), prepared(g.far_bias),
                                       g.q_pos.contiguous(), g.k_pos.contiguous(), prepared(g.keep),
                                       g.k_begin.defined() ? g.k_begin.contiguous() : Tensor(), g.window);
}

// --- DeviceKvCache -------------------------------------------------------------------------------------

DeviceKvCache::DeviceKvCache(int64_t n_seq, int64_t n_layers, int64_t n_kv_heads, int64_t head_dim, int64_t window,
                             int64_t page_size, int64_t max_len, bool keep_all, torch::Device device)
    : B_(n_seq), L_(n_layers), Hkv_(n_kv_heads), D_(head_dim), W_(window), P_(page_size), keep_all_(keep_all), dev_(device) {
  if (!device.is_cuda()) throw InputError("DeviceKvCache: device " + device.str() + " is not a CUDA device");
  if (B_ < 1 || L_ < 1 || Hkv_ < 1 || D_ < 1 || W_ < 1 || P_ < 1 || max_len < 1)
    throw InputError("DeviceKvCache: sequences, layers, KV heads, head dim, window, page size and max length must be >= 1");
  c10::cuda::CUDAGuard guard(dev_);
  auto opt = torch::TensorOptions().device(dev_);
  ring_k_ = torch::zeros({L_, B_, Hkv_, W_, D_}, opt.dtype(torch::kFloat32));
  ring_v_ = torch::zeros_like(ring_k_);
  ring_pos_ = torch::zeros({L_, B_, W_}, opt.dtype(torch::kInt64));
  ring_keep_ = torch::zeros({L_, B_, Hkv_, W_}, opt.dtype(torch::kUInt8));
  ring_len_ = torch::zeros({L_, B_}, opt.dtype(torch::kInt32));
  seen_ = torch::zeros({L_, B_}, opt.dtype(torch::kInt64));
  max_pages_ = (max_len + P_ - 1) / P_ + 1;
  page_table_ = torch::full({L_, B_ * Hkv_, max_pages_}, -1, opt.dtype(torch::kInt32));
  store_len_ = torch::zeros({L_, B_ * Hkv_}, opt.dtype(torch::kInt32));
  indptr_ = torch::arange(B_ * Hkv_ + 1, opt.dtype(torch::kInt32)) * int32_t(max_pages_);
  counters_ = torch::zeros({2}, opt.dtype(torch::kInt32));
  pos_.assign(L_, 0);
  grow(L_ * B_ * Hkv_ * 2);
}

void DeviceKvCache::grow(int64_t pages) {
  const int64_t old = k_pool_.defined() ? k_pool_.size(0) : 0, n = old + pages;
  if (n > 2147483647) throw Error("DeviceKvCache: more than 2^31 pages");
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(dev_);
  auto k = torch::empty({n, P_, D_}, f32), v = torch::empty({n, P_, D_}, f32);
  if (old) k.narrow(0, 0, old).copy_(k_pool_), v.narrow(0, 0, old).copy_(v_pool_);
  k_pool_ = k, v_pool_ = v;
  auto offsets = torch::arange(n, f32.dtype(torch::kInt64)) * int64_t(P_ * D_ * sizeof(float));  // bytes
  page_k_ = offsets + int64_t(reinterpret_cast<uintptr_t>(k_pool_.data_ptr<float>()));
  page_v_ = offsets + int64_t(reinterpret_cast<uintptr_t>(v_pool_.data_ptr<float>()));
  free_pages_ = torch::arange(n, f32.dtype(torch::kInt32));
}

void DeviceKvCache::reserve(int64_t T) {
  c10::cuda::CUDAGuard guard(dev_);
  const auto c = counters_.cpu();
  if (c[1].item<int32_t>()) throw Error("DeviceKvCache: the page pool overflowed (a step ran without reserve)");
  const int64_t used = c[0].item<int32_t>(), need = L_ * B_ * Hkv_ * ((T + P_ - 1) / P_ + 1);
  if (k_pool_.size(0) - used < need) grow(std::max(k_pool_.size(0), need));
}

kernels::AppendParams DeviceKvCache::layer_params(int64_t il) const {
  kernels::AppendParams a;
  a.n_seq = B_, a.Hkv = Hkv_, a.D = D_, a.W = W_, a.page_size = P_;
  a.ring_k = ring_k_[il].data_ptr<float>(), a.ring_v = ring_v_[il].data_ptr<float>();
  a.ring_pos = ring_pos_[il].data_ptr<int64_t>(), a.ring_keep = ring_keep_[il].data_ptr<uint8_t>();
  a.ring_len = ring_len_[il].data_ptr<int32_t>(), a.seen = seen_[il].data_ptr<int64_t>();
  a.k_pool = k_pool_.data_ptr<float>(), a.v_pool = v_pool_.data_ptr<float>();
  a.page_table = page_table_[il].data_ptr<int32_t>(), a.store_len = store_len_[il].data_ptr<int32_t>();
  a.max_pages = max_pages_;
  a.free_pages = free_pages_.data_ptr<int32_t>(), a.free_next = counters_.data_ptr<int32_t>();
  a.n_free = k_pool_.size(0), a.overflow = counters_.data_ptr<int32_t>() + 1;
  return a;
}

void DeviceKvCache::append(int64_t il, const Tensor& k, const Tensor& v, const Tensor& keep) {
  kernels::AppendParams a = layer_params(il);
  a.k_new = k.data_ptr<float>(), a.v_new = v.data_ptr<float>(), a.keep_new = keep.data_ptr<uint8_t>();
  check(kernels::cuda::cache_append(a, stream_of(dev_)), "cache append");
  ++pos_[il];
}

Tensor DeviceKvCache::attend(int64_t il, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& keep) {
  constexpr const char* where = "DeviceKvCache::attend";
  if (il < 0 || il >= L_) throw InputError(std::string(where) + ": layer " + std::to_string(il) + " of " + std::to_string(L_));
  const int64_t H = q.defined() && q.dim() == 4 ? q.size(1) : 0, T = H ? q.size(2) : 0;
  expect(where, "q", q, {B_, H, T, D_}, torch::kFloat32, dev_);
  expect(where, "k", k, {B_, Hkv_, T, D_}, torch::kFloat32, dev_);
  expect(where, "v", v, {B_, Hkv_, T, D_}, torch::kFloat32, dev_);
  expect(where, "keep", keep, {B_, T, Hkv_}, keep.defined() ? keep.scalar_type() : torch::kUInt8, dev_);
  if (H == 0 || H % Hkv_ != 0 || T == 0) throw InputError(std::string(where) + ": q needs T >= 1 and a multiple of " + std::to_string(Hkv_) + " heads");
  c10::cuda::CUDAGuard guard(dev_);
  const cudaStream_t stream = stream_of(dev_);
  auto keep_u8 = keep_all_ ? torch::ones({B_, T, Hkv_}, keep.options().dtype(torch::kUInt8)) : keep.to(torch::kUInt8);
  auto append_all = [&] {
    for (int64_t t = 0; t < T; ++t)
      append(il, k.select(2, t).contiguous(), v.select(2, t).contiguous(), keep_u8.select(1, t).contiguous());
  };
  const auto view = [&] {
    return kernels::append_view(layer_params(il), reinterpret_cast<const float* const*>(page_k_.data_ptr<int64_t>()),
                                reinterpret_cast<const float* const*>(page_v_.data_ptr<int64_t>()), indptr_.data_ptr<int32_t>());
  };
  if (T == 1) {  // decode: the token joins the cache, then attends over it
    append_all();
    auto qc = q.select(2, 0).contiguous();  // (B, H, D)
    auto y = torch::empty_like(qc);
    kernels::DecodeParams p;
    p.q = qc.data_ptr<float>(), p.y = y.data_ptr<float>(), p.H = H, p.scale = float(1.0 / std::sqrt(double(D_)));
    p.cache = view();
    const int64_t splits = kernels::cuda::decode_splits(pos_[il]), n = kernels::cuda::decode_workspace_floats(B_, H, D_, splits);
    if (!workspace_.defined() || workspace_.numel() < n) workspace_ = torch::empty({n}, qc.options());
    check(kernels::cuda::decode_attention(p, splits, workspace_.data_ptr<float>(), workspace_.numel(), stream), "decode attention");
    return y.unsqueeze(2);
  }
  // Prefill: keys = [store (padded to the longest head) | W ring slots | the chunk], as the CPU engine does.
  const int64_t pos0 = pos_[il], ring = std::min(pos0, W_);
  const int64_t n_store = store_len_[il].max().item<int32_t>(), S = n_store + W_ + T;
  auto K = torch::empty({B_, Hkv_, S, D_}, q.options()), V = torch::empty_like(K);
  auto kept = torch::empty({B_, Hkv_, S}, keep_u8.options());
  kernels::cuda::GatherParams gp;
  gp.cache = view(), gp.n_store = n_store, gp.S = S;
  gp.k = K.data_ptr<float>(), gp.v = V.data_ptr<float>(), gp.keep = kept.data_ptr<uint8_t>();
  check(kernels::cuda::cache_gather(gp, stream), "cache gather");
  K.narrow(2, n_store + W_, T).copy_(k), V.narrow(2, n_store + W_, T).copy_(v);
  kept.narrow(2, n_store + W_, T).copy_(keep_u8.transpose(1, 2));
  // Positions: the lockstep sequences share them. Ring slot s holds the position p < pos0 with p % W = s.
  std::vector<int64_t> k_pos(S, kFar), q_pos(T);
  for (int64_t s = 0; s < W_; ++s) k_pos[n_store + s] = kFuture;
  for (int64_t p = pos0 - ring; p < pos0; ++p) k_pos[n_store + p % W_] = p;
  for (int64_t t = 0; t < T; ++t) k_pos[n_store + W_ + t] = q_pos[t] = pos0 + t;
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  auto y = cuda_ops::forward_rows<float>(prepared(q), K, V, torch::tensor(q_pos, i64).to(dev_), torch::tensor(k_pos, i64).to(dev_), W_,
                             kept, Tensor(), Tensor()).first;
  append_all();
  return y;
}

void DeviceKvCache::clear() {
  c10::cuda::CUDAGuard guard(dev_);
  for (auto* t : {&ring_len_, &store_len_, &counters_}) t->zero_();
  seen_.zero_(), page_table_.fill_(-1);
  pos_.assign(L_, 0);
}

std::vector<int64_t> DeviceKvCache::entries() const {
  c10::cuda::CUDAGuard guard(dev_);
  if (counters_[1].item<int32_t>()) throw Error("DeviceKvCache: the page pool overflowed (a step ran without reserve)");
  auto n = (ring_len_.unsqueeze(2) + store_len_.view({L_, B_, Hkv_})).to(torch::kInt64).flatten().cpu();  // (L * B * Hkv)
  return std::vector<int64_t>(n.data_ptr<int64_t>(), n.data_ptr<int64_t>() + n.numel());
}

int64_t DeviceKvCache::bytes_used() const {
  c10::cuda::CUDAGuard guard(dev_);
  const int64_t pages = counters_[0].item<int32_t>();
  return 2 * (ring_k_.numel() + pages * P_ * D_) * int64_t(sizeof(float));
}

int64_t DeviceKvCache::bytes_reserved() const { return 2 * (ring_k_.numel() + k_pool_.numel()) * int64_t(sizeof(float)); }

}  // namespace spkv::cuda_ops
