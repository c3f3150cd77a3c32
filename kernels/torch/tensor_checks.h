// The shared internals of the LibTorch side of the CUDA kernels (gated_attention_op.cpp,
// device_kv_cache.cpp): tensor checks whose messages name the tensor, the kernels' parameter structs filled
// from tensors, and the forward launch. Not a public interface.
#pragma once
#include <c10/cuda/CUDAStream.h>
#include <torch/torch.h>

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/attention_params.h"
#include "kernels/cuda/prefill.h"

namespace spkv::cuda_ops::detail {

using torch::Tensor;
inline constexpr int64_t kFar = -(int64_t(1) << 40);    // store keys in a gathered prefill: far behind every query
inline constexpr int64_t kFuture = int64_t(1) << 40;     // an unused ring slot: after every query

inline std::string describe(torch::ScalarType dtype, at::IntArrayRef shape, const torch::Device& device) {
  std::ostringstream s;
  s << c10::toString(dtype) << " (";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << ") on " << device.str();
  return s.str();
}

// t must have this dtype, shape and device; the message names the tensor and says what was expected.
inline void expect(const char* where, const char* name, const Tensor& t, std::vector<int64_t> shape, torch::ScalarType dtype,
            const torch::Device& device) {
  if (t.defined() && t.sizes() == at::IntArrayRef(shape) && t.scalar_type() == dtype && t.device() == device) return;
  throw std::invalid_argument(std::string(where) + ": " + name + " must be " + describe(dtype, shape, device) + ", got " +
                   (t.defined() ? describe(t.scalar_type(), t.sizes(), t.device()) : std::string("no tensor")));
}

// The kernels read the last dimension contiguously and write gradients with their input's strides.
inline Tensor prepared(const Tensor& t) {
  if (!t.defined()) return t;
  return t.stride(-1) == 1 && t.is_non_overlapping_and_dense() ? t : t.contiguous();
}

inline void check(kernels::Status s, const char* what) {
  if (s != kernels::Status::ok) throw std::runtime_error(std::string("cuda ") + what + ": " + kernels::to_string(s));
}

inline cudaStream_t stream_of(const torch::Device& d) { return c10::cuda::getCurrentCUDAStream(d.index()).stream(); }

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

}  // namespace spkv::cuda_ops::detail
