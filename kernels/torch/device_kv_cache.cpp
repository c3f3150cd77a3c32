// The device KV cache (device_kv_cache.h): allocation, the append and decode kernels, and prefill through
// a gather of each head's cache ahead of the chunk.
#include "kernels/torch/device_kv_cache.h"

#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cmath>

#include "kernels/cuda/decode.h"
#include "kernels/torch/tensor_checks.h"

namespace spkv::cuda_ops {

using namespace detail;
using torch::Tensor;

DeviceKvCache::DeviceKvCache(int64_t n_seq, int64_t n_layers, int64_t n_kv_heads, int64_t head_dim, int64_t window,
                             int64_t page_size, int64_t max_len, bool keep_all, torch::Device device, torch::ScalarType rows)
    : B_(n_seq), L_(n_layers), Hkv_(n_kv_heads), D_(head_dim), W_(window), P_(page_size), keep_all_(keep_all),
      dev_(device.is_cuda() && !device.has_index() ? torch::Device(torch::kCUDA, c10::cuda::current_device()) : device),
      rows_(rows) {
  if (!device.is_cuda()) throw std::invalid_argument("DeviceKvCache: device " + device.str() + " is not a CUDA device");
  if (rows != torch::kFloat32 && rows != torch::kBFloat16)
    throw std::invalid_argument(std::string("DeviceKvCache: rows must be Float or BFloat16, got ") + c10::toString(rows));
  if (B_ < 1 || L_ < 1 || Hkv_ < 1 || D_ < 1 || W_ < 1 || P_ < 1 || max_len < 1)
    throw std::invalid_argument("DeviceKvCache: sequences, layers, KV heads, head dim, window, page size and max length must be >= 1");
  c10::cuda::CUDAGuard guard(dev_);
  auto opt = torch::TensorOptions().device(dev_);
  ring_k_ = torch::zeros({L_, B_, Hkv_, W_, D_}, opt.dtype(rows_));
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
  if (n > 2147483647) throw std::runtime_error("DeviceKvCache: more than 2^31 pages");
  auto opt = torch::TensorOptions().dtype(rows_).device(dev_);
  auto k = torch::empty({n, P_, D_}, opt), v = torch::empty({n, P_, D_}, opt);
  if (old) k.narrow(0, 0, old).copy_(k_pool_), v.narrow(0, 0, old).copy_(v_pool_);
  k_pool_ = k, v_pool_ = v;
  auto offsets = torch::arange(n, opt.dtype(torch::kInt64)) * int64_t(P_ * D_ * k.element_size());  // bytes
  page_k_ = offsets + int64_t(reinterpret_cast<uintptr_t>(k_pool_.data_ptr()));
  page_v_ = offsets + int64_t(reinterpret_cast<uintptr_t>(v_pool_.data_ptr()));
  free_pages_ = torch::arange(n, opt.dtype(torch::kInt32));
}

// A head's store takes at most ceil(n / P) new pages over its next n evictions, so after a read of the
// pool counter (used pages) the next n tokens of every layer need at most L * B * Hkv * ceil(n / P) more.
// The counter is read only when that bound would pass the pool; the pool then doubles if it has less room
// than it has used.
void DeviceKvCache::reserve(int64_t T) {
  const int64_t heads = L_ * B_ * Hkv_;
  auto bound = [&](int64_t n) { return pages_read_ + heads * ((n + P_ - 1) / P_); };
  if (bound(tokens_since_read_ + T) <= k_pool_.size(0)) {
    tokens_since_read_ += T;
    return;
  }
  c10::cuda::CUDAGuard guard(dev_);
  const auto c = counters_.cpu();
  if (c[1].item<int32_t>()) throw std::runtime_error("DeviceKvCache: the page pool overflowed (a step ran without reserve)");
  pages_read_ = c[0].item<int32_t>(), tokens_since_read_ = T;
  const int64_t pool = k_pool_.size(0), need = bound(T) - pages_read_;
  if (pool - pages_read_ < std::max(need, pages_read_)) grow(std::max(pool, need));
}

template <class Row>
kernels::AppendParamsT<Row> DeviceKvCache::layer_params(int64_t il) const {
  kernels::AppendParamsT<Row> a;
  a.n_seq = B_, a.Hkv = Hkv_, a.D = D_, a.W = W_, a.page_size = P_;
  a.ring_k = rows<Row>(ring_k_[il]), a.ring_v = rows<Row>(ring_v_[il]);
  a.ring_pos = ring_pos_[il].data_ptr<int64_t>(), a.ring_keep = ring_keep_[il].data_ptr<uint8_t>();
  a.ring_len = ring_len_[il].data_ptr<int32_t>(), a.seen = seen_[il].data_ptr<int64_t>();
  a.k_pool = rows<Row>(k_pool_), a.v_pool = rows<Row>(v_pool_);
  a.page_table = page_table_[il].data_ptr<int32_t>(), a.store_len = store_len_[il].data_ptr<int32_t>();
  a.max_pages = max_pages_;
  a.free_pages = free_pages_.data_ptr<int32_t>(), a.free_next = counters_.data_ptr<int32_t>();
  a.n_free = k_pool_.size(0), a.overflow = counters_.data_ptr<int32_t>() + 1;
  return a;
}

template <class Row>
void DeviceKvCache::append(int64_t il, const Tensor& k, const Tensor& v, const Tensor& keep) {
  kernels::AppendParamsT<Row> a = layer_params<Row>(il);
  a.T = k.size(2);
  a.k_new = rows<Row>(k), a.v_new = rows<Row>(v), a.keep_new = keep.data_ptr<uint8_t>();
  check(kernels::cuda::cache_append(a, stream_of(dev_)), "cache append");
  pos_[il] += a.T;
}

Tensor DeviceKvCache::attend(int64_t il, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& keep) {
  constexpr const char* where = "DeviceKvCache::attend";
  if (il < 0 || il >= L_) throw std::invalid_argument(std::string(where) + ": layer " + std::to_string(il) + " of " + std::to_string(L_));
  const int64_t H = q.defined() && q.dim() == 4 ? q.size(1) : 0, T = H ? q.size(2) : 0;
  expect(where, "q", q, {B_, H, T, D_}, torch::kFloat32, dev_);
  expect(where, "k", k, {B_, Hkv_, T, D_}, torch::kFloat32, dev_);
  expect(where, "v", v, {B_, Hkv_, T, D_}, torch::kFloat32, dev_);
  expect(where, "keep", keep, {B_, T, Hkv_}, keep.defined() ? keep.scalar_type() : torch::kUInt8, dev_);
  if (H == 0 || H % Hkv_ != 0 || T == 0) throw std::invalid_argument(std::string(where) + ": q needs T >= 1 and a multiple of " + std::to_string(Hkv_) + " heads");
  c10::cuda::CUDAGuard guard(dev_);
  auto keep_u8 = keep_all_ ? torch::ones({B_, T, Hkv_}, keep.options().dtype(torch::kUInt8)) : keep.to(torch::kUInt8);
  if (rows_ == torch::kFloat32) return attend_rows<float>(il, q, k, v, keep_u8);
  return attend_rows<kernels::bf16>(il, q.to(rows_), k.to(rows_), v.to(rows_), keep_u8).to(torch::kFloat32);
}

template <class Row>
Tensor DeviceKvCache::attend_rows(int64_t il, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& keep_u8) {
  const int64_t H = q.size(1), T = q.size(2);
  const cudaStream_t stream = stream_of(dev_);
  auto append_all = [&] { append<Row>(il, k.contiguous(), v.contiguous(), keep_u8.contiguous()); };
  const auto view = [&] {
    return kernels::append_view(layer_params<Row>(il), reinterpret_cast<const Row* const*>(page_k_.data_ptr<int64_t>()),
                                reinterpret_cast<const Row* const*>(page_v_.data_ptr<int64_t>()), indptr_.data_ptr<int32_t>());
  };
  if (T == 1) {  // decode: the token joins the cache, then attends over it
    append_all();
    auto qc = q.select(2, 0).contiguous();  // (B, H, D)
    auto y = torch::empty_like(qc);
    kernels::DecodeParamsT<Row> p;
    p.q = rows<Row>(qc), p.y = rows<Row>(y), p.H = H, p.scale = float(1.0 / std::sqrt(double(D_)));
    p.cache = view();
    const int64_t splits = kernels::cuda::decode_splits(pos_[il]), n = kernels::cuda::decode_workspace_floats(B_, H, D_, splits);
    if (!workspace_.defined() || workspace_.numel() < n) workspace_ = torch::empty({n}, qc.options().dtype(torch::kFloat32));
    check(kernels::cuda::decode_attention(p, splits, workspace_.data_ptr<float>(), workspace_.numel(), stream), "decode attention");
    return y.unsqueeze(2);
  }
  // Prefill: keys = [store (padded to the longest head) | W ring slots | the chunk], as the CPU engine does.
  const int64_t pos0 = pos_[il], ring = std::min(pos0, W_);
  const int64_t n_store = store_len_[il].max().item<int32_t>(), S = n_store + W_ + T;
  auto K = torch::empty({B_, Hkv_, S, D_}, q.options()), V = torch::empty_like(K);
  auto kept = torch::empty({B_, Hkv_, S}, keep_u8.options());
  kernels::cuda::GatherParamsT<Row> gp;
  gp.cache = view(), gp.n_store = n_store, gp.S = S;
  gp.k = rows<Row>(K), gp.v = rows<Row>(V), gp.keep = kept.data_ptr<uint8_t>();
  check(kernels::cuda::cache_gather(gp, stream), "cache gather");
  K.narrow(2, n_store + W_, T).copy_(k), V.narrow(2, n_store + W_, T).copy_(v);
  kept.narrow(2, n_store + W_, T).copy_(keep_u8.transpose(1, 2));
  // Positions: the lockstep sequences share them. Ring slot s holds the position p < pos0 with p % W = s.
  std::vector<int64_t> k_pos(S, kFar), q_pos(T);
  for (int64_t s = 0; s < W_; ++s) k_pos[n_store + s] = kFuture;
  for (int64_t p = pos0 - ring; p < pos0; ++p) k_pos[n_store + p % W_] = p;
  for (int64_t t = 0; t < T; ++t) k_pos[n_store + W_ + t] = q_pos[t] = pos0 + t;
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  auto y = forward_rows<Row>(prepared(q), K, V, torch::tensor(q_pos, i64).to(dev_), torch::tensor(k_pos, i64).to(dev_), W_,
                             kept, Tensor(), Tensor()).first;
  append_all();
  return y;
}

void DeviceKvCache::clear() {
  c10::cuda::CUDAGuard guard(dev_);
  for (auto* t : {&ring_len_, &store_len_, &counters_}) t->zero_();
  seen_.zero_(), page_table_.fill_(-1);
  pos_.assign(L_, 0);
  pages_read_ = tokens_since_read_ = 0;
}

std::vector<int64_t> DeviceKvCache::entries() const {
  c10::cuda::CUDAGuard guard(dev_);
  if (counters_[1].item<int32_t>()) throw std::runtime_error("DeviceKvCache: the page pool overflowed (a step ran without reserve)");
  auto n = (ring_len_.unsqueeze(2) + store_len_.view({L_, B_, Hkv_})).to(torch::kInt64).flatten().cpu();  // (L * B * Hkv)
  return std::vector<int64_t>(n.data_ptr<int64_t>(), n.data_ptr<int64_t>() + n.numel());
}

int64_t DeviceKvCache::bytes_used() const {
  c10::cuda::CUDAGuard guard(dev_);
  const int64_t pages = counters_[0].item<int32_t>();
  return 2 * (ring_k_.numel() + pages * P_ * D_) * int64_t(ring_k_.element_size());
}

int64_t DeviceKvCache::bytes_reserved() const { return 2 * (ring_k_.numel() + k_pool_.numel()) * int64_t(ring_k_.element_size()); }

}  // namespace spkv::cuda_ops
