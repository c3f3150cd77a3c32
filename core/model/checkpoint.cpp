// Checkpoint loading (an index, checkpoint_index.h, turned into float32 tensors); HF-style checkpoint writing.
#include "core/model/checkpoint.h"

#include <torch/torch.h>

#include <filesystem>

#include "core/base/errors.h"
#include "core/model/safetensors.h"

namespace spkv {
namespace fs = std::filesystem;

namespace {

// A float32 tensor that views mapped bytes (no copy); the mapping lives as long as the tensor.
torch::Tensor view_mapped(const std::shared_ptr<MappedFile>& file, const void* data, std::vector<int64_t> shape) {
  auto keep = file;
  return torch::from_blob(const_cast<void*>(data), shape, [keep](void*) {}, torch::kFloat32);
}

torch::Tensor to_f32(const TensorView& v, const std::shared_ptr<MappedFile>& file, const std::string& path) {
  switch (v.dtype) {
    case DType::f32: return view_mapped(file, v.data, v.shape);
    case DType::f16:
      return torch::from_blob(const_cast<void*>(v.data), v.shape, torch::kFloat16).to(torch::kFloat32);
    case DType::bf16:
      return torch::from_blob(const_cast<void*>(v.data), v.shape, torch::kBFloat16).to(torch::kFloat32);
    case DType::f64:
      return torch::from_blob(const_cast<void*>(v.data), v.shape, torch::kFloat64).to(torch::kFloat32);
    default:
      throw CheckpointError(path, "tensor '" + v.name + "' has dtype " + to_string(v.dtype) +
                                      ", expected F32, F16 or BF16");
  }
}

}  // namespace

Checkpoint load_checkpoint(const std::string& path) {
  const CheckpointIndex index = index_checkpoint(path);  // a missing predictor: LlamaForCausalLM::load decides
  Checkpoint ck;
  ck.config = index.config;
  ck.path = index.path;
  ck.config_file = index.config_file;
  ck.format = index.format;
  for (const auto& [name, t] : index.tensors) {
    ck.tensors[name] = to_f32(t.view, t.mapping, t.file);
    ck.origin[name] = t.file;
  }
  return ck;
}

void check_tensors(const Checkpoint& ck, const ModelConfig& c, bool init_missing_predictor) {
  TensorShapes shapes;
  for (const auto& [name, t] : ck.tensors)
    shapes[name] = {t.sizes().vec(), ck.origin.count(name) ? ck.origin.at(name) : ck.path};
  check_shapes(shapes, c, ck.path, ck.config_file, init_missing_predictor);
}

torch::Tensor permute_for_rotate_half(const torch::Tensor& w, int64_t n_heads) {
  const int64_t rows = w.size(0), cols = w.size(1);
  // (H, D/2, 2, C) -> (H, 2, D/2, C): pair member j of pair i moves to row j * D/2 + i.
  return w.reshape({n_heads, rows / n_heads / 2, 2, cols}).transpose(1, 2).reshape({rows, cols}).contiguous();
}

void save_hf_checkpoint(const std::string& dir, const ModelConfig& config,
                        const std::map<std::string, torch::Tensor>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create directory: " + ec.message());
  std::vector<torch::Tensor> keep;
  std::vector<TensorView> views;
  for (auto& [name, t] : tensors) {
    keep.push_back(t.detach().to(torch::kCPU, torch::kFloat32).contiguous());
    TensorView v;
    v.name = name;
    v.dtype = DType::f32;
    v.shape = keep.back().sizes().vec();
    v.data = keep.back().data_ptr();
    v.nbytes = keep.back().numel() * sizeof(float);
    views.push_back(v);
  }
  auto meta = metadata;
  meta.emplace("format", "pt");
  write_safetensors((fs::path(dir) / "model.safetensors").string(), views, meta);
  write_file_atomic((fs::path(dir) / "config.json").string(), config.to_hf_json());
}

}  // namespace spkv
