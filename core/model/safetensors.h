// Reader and writer of the safetensors format (8-byte little-endian header length, JSON header, raw
// little-endian tensor bytes). The reader memory-maps the file and hands out views; it never converts
// dtypes (that is checkpoint.cpp's job). Torch-free.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace spkv {

enum class DType { f32, f16, bf16, f64, i64, i32, i16, i8, u8, boolean };
const char* to_string(DType d);  // the safetensors spelling: "F32", "BF16", ...
size_t dtype_size(DType d);

// A read-only (copy-on-write) memory map of a whole file. Kept alive by shared_ptr while views exist.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws CheckpointError
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return static_cast<const uint8_t*>(addr_); }
  uint8_t* mutable_data() { return static_cast<uint8_t*>(addr_); }  // private (MAP_PRIVATE) pages
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* addr_ = nullptr;
  size_t size_ = 0;
};

struct TensorView {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;  // outermost first
  const void* data = nullptr;
  size_t nbytes = 0;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps and validates the whole header: every tensor's dtype, shape and byte range. Throws
  // CheckpointError naming the file and the tensor for any inconsistency.
  explicit SafetensorsFile(const std::string& path);
  const std::string& path() const { return file_->path(); }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  const TensorView& get(const std::string& name) const;  // throws CheckpointError if missing
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::shared_ptr<MappedFile> mapping() const { return file_; }

 private:
  std::shared_ptr<MappedFile> file_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Writes tensors (in the given order) to `path` atomically: a temporary file is written, then renamed.
void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes `bytes` to `path` atomically (temporary file in the same folder, then rename).
void write_file_atomic(const std::string& path, const std::string& bytes);

// Removes a file or a folder with everything in it; nothing when `path` does not exist. Use it instead of
// std::filesystem::remove_all: pip LibTorch wheels export their own static copy of libstdc++'s recursive
// filesystem code, which binds in its place and crashes (pytorch/pytorch#133437; seen with torch 2.11).
void remove_tree(const std::string& path);

}  // namespace spkv
