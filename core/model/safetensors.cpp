// safetensors reading (mmap + header validation) and atomic writing.
#include "core/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <nlohmann/json.hpp>

#include "core/base/errors.h"

namespace spkv {
using json = nlohmann::json;

namespace {
struct DTypeInfo {
  DType d;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::f32, "F32", 4}, {DType::f16, "F16", 2}, {DType::bf16, "BF16", 2}, {DType::f64, "F64", 8},
    {DType::i64, "I64", 8}, {DType::i32, "I32", 4}, {DType::i16, "I16", 2},   {DType::i8, "I8", 1},
    {DType::u8, "U8", 1},   {DType::boolean, "BOOL", 1}};
}  // namespace

const char* to_string(DType d) {
  for (auto& i : kDTypes)
    if (i.d == d) return i.name;
  return "?";
}
size_t dtype_size(DType d) {
  for (auto& i : kDTypes)
    if (i.d == d) return i.size;
  return 0;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw CheckpointError(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw CheckpointError(path, std::string("cannot stat: ") + std::strerror(errno));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    // Private + writable: pages are copy-on-write, so tensors built on them may be trained in place
    // without touching the file.
    addr_ = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (addr_ == MAP_FAILED) {
      addr_ = nullptr;
      ::close(fd);
      throw CheckpointError(path, std::string("cannot mmap: ") + std::strerror(errno));
    }
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (addr_) ::munmap(addr_, size_);
}

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(std::make_shared<MappedFile>(path)) {
  const size_t fsize = file_->size();
  if (fsize < 8) throw CheckpointError(path, "truncated file: " + std::to_string(fsize) + " bytes, no header length");
  uint64_t hlen = 0;
  std::memcpy(&hlen, file_->data(), 8);  // little-endian host assumed (x86-64, aarch64)
  if (hlen > fsize - 8)
    throw CheckpointError(path, "header length " + std::to_string(hlen) + " runs past the end of the file (" +
                                    std::to_string(fsize) + " bytes)");
  json h;
  std::set<std::string> names;  // top-level keys, to refuse duplicates (a plain parse keeps the last one)
  std::string duplicate;
  try {
    h = json::parse(reinterpret_cast<const char*>(file_->data()) + 8,
                    reinterpret_cast<const char*>(file_->data()) + 8 + hlen,
                    [&](int depth, json::parse_event_t event, json& parsed) {
                      if (event == json::parse_event_t::key && depth == 1 && !names.insert(parsed.get<std::string>()).second &&
                          duplicate.empty())
                        duplicate = parsed.get<std::string>();
                      return true;
                    });
  } catch (const json::exception& e) {
    throw CheckpointError(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!h.is_object()) throw CheckpointError(path, "header is not a JSON object");
  if (!duplicate.empty()) throw CheckpointError(path, "tensor '" + duplicate + "' appears twice in the header");
  const size_t data_start = 8 + hlen;
  const size_t data_size = fsize - data_start;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") {
      if (it->is_object())
        for (auto m = it->begin(); m != it->end(); ++m)
          metadata_[m.key()] = m->is_string() ? m->get<std::string>() : m->dump();
      continue;
    }
    const json& e = *it;
    auto bad = [&](const std::string& why) { return CheckpointError(path, "tensor '" + name + "': " + why); };
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
      throw bad("entry needs dtype, shape and data_offsets");
    TensorView v;
    v.name = name;
    const std::string dt = e["dtype"].is_string() ? e["dtype"].get<std::string>() : e["dtype"].dump();
    bool known = false;
    for (auto& i : kDTypes)
      if (dt == i.name) v.dtype = i.d, known = true;
    if (!known) throw bad("unknown dtype '" + dt + "'");
    if (!e["shape"].is_array()) throw bad("shape is not an array");
    uint64_t bytes = dtype_size(v.dtype);  // the shape's size, checked for overflow
    for (auto& s : e["shape"]) {
      if (!s.is_number_integer() || s.get<int64_t>() < 0) throw bad("shape " + e["shape"].dump() + " is invalid");
      v.shape.push_back(s.get<int64_t>());
      if (__builtin_mul_overflow(bytes, uint64_t(v.shape.back()), &bytes))
        throw bad("shape " + e["shape"].dump() + " is too large (its size overflows 64 bits)");
    }
    const json& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw bad("data_offsets must be [begin, end]");
    const uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
    if (b > en) throw bad("data_offsets begin > end");
    if (en > data_size)
      throw bad("data ends at byte " + std::to_string(data_start + en) + " but the file has only " +
                std::to_string(fsize) + " bytes (truncated file?)");
    v.nbytes = en - b;
    if (bytes != v.nbytes)
      throw bad("shape " + e["shape"].dump() + " of " + dt + " needs " + std::to_string(bytes) +
                " bytes but data_offsets span " + std::to_string(v.nbytes));
    if (b % dtype_size(v.dtype) != 0)
      throw bad("data_offsets begin " + std::to_string(b) + " is not a multiple of the " + dt + " element size");
    v.data = file_->data() + data_start + b;
    tensors_.emplace(name, std::move(v));
  }
  // The specification: the data buffer is indexed entirely, without holes or overlaps.
  std::vector<std::pair<uint64_t, const TensorView*>> by_offset;
  for (auto& [name, v] : tensors_)
    by_offset.emplace_back(uint64_t(static_cast<const uint8_t*>(v.data) - (file_->data() + data_start)), &v);
  std::sort(by_offset.begin(), by_offset.end(), [](auto& a, auto& b) { return a.first < b.first; });
  uint64_t end = 0;
  for (auto& [begin, v] : by_offset) {
    if (begin != end)
      throw CheckpointError(path, "tensor '" + v->name + "': data_offsets begin at " + std::to_string(begin) +
                                      (begin < end ? ", inside the previous tensor" : ", after a gap") +
                                      " (the data must be contiguous: expected " + std::to_string(end) + ")");
    end = begin + v->nbytes;
  }
  if (end != data_size)
    throw CheckpointError(path, "the tensors' data ends at byte " + std::to_string(end) + " of a " + std::to_string(data_size) +
                                    "-byte data section (the specification allows no unindexed bytes)");
}

const TensorView& SafetensorsFile::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw CheckpointError(path(), "missing tensor '" + name + "'");
  return it->second;
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(path + ": cannot open for writing: " + std::strerror(errno));
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw Error(path + ": write failed: " + std::strerror(errno));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error(path + ": cannot rename temporary file into place: " + std::strerror(errno));
  }
}

void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json h = json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t off = 0;
  for (auto& t : tensors) {
    if (t.nbytes != t.numel() * dtype_size(t.dtype))
      throw Error(path + ": tensor '" + t.name + "' has " + std::to_string(t.nbytes) + " bytes for its shape");
    h[t.name] = {{"dtype", to_string(t.dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + t.nbytes}}};
    off += t.nbytes;
  }
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');  // align the data section to 8 bytes
  std::string bytes;
  bytes.reserve(8 + header.size() + off);
  const uint64_t hlen = header.size();
  bytes.append(reinterpret_cast<const char*>(&hlen), 8);
  bytes += header;
  for (auto& t : tensors) bytes.append(static_cast<const char*>(t.data), t.nbytes);
  write_file_atomic(path, bytes);
}

void remove_tree(const std::string& path) {
  namespace fs = std::filesystem;
  if (fs::is_directory(fs::symlink_status(path)))
    for (const auto& e : fs::directory_iterator(path)) remove_tree(e.path().string());
  fs::remove(path);
}

}  // namespace spkv
