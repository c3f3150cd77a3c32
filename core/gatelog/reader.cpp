// Gate-log reading on HDF5's C API: attributes and small datasets at open, token ranges by hyperslab.
#include "core/gatelog/reader.h"

#include <hdf5.h>

#include <algorithm>

#include "core/base/errors.h"
#include "core/gatelog/schema.h"

namespace spkv {
namespace {
constexpr int kSchemaVersion = 2;  // the newest schema this build reads (1 and 2)
constexpr hid_t kFileType = -2;    // rows(): read the elements in the dataset's own type
}

struct GateLogReader::Impl {
  std::string path;
  hid_t file = -1;

  [[noreturn]] void fail(const std::string& what) const { throw FileError(path, what); }

  bool has_attr(const char* name) const { return H5Aexists(file, name) > 0; }
  template <class T>
  T num(const char* name, hid_t type) const {
    hid_t a = H5Aopen(file, name, H5P_DEFAULT);
    if (a < 0) fail(std::string("not a gate log: the root attribute '") + name + "' is missing");
    T v{};
    const herr_t e = H5Aread(a, type, &v);
    H5Aclose(a);
    if (e < 0) fail(std::string("root attribute '") + name + "' is not a number");
    return v;
  }
  std::string str(const char* name) const {
    hid_t a = H5Aopen(file, name, H5P_DEFAULT);
    if (a < 0) fail(std::string("not a gate log: the root attribute '") + name + "' is missing");
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE), H5Tset_cset(t, H5T_CSET_UTF8);
    char* c = nullptr;
    const herr_t e = H5Aread(a, t, &c);
    std::string out = e >= 0 && c ? c : "";
    if (c) H5free_memory(c);
    H5Tclose(t), H5Aclose(a);
    if (e < 0) fail(std::string("root attribute '") + name + "' is not a string");
    return out;
  }
  std::string str_or_empty(const char* name) const { return has_attr(name) ? str(name) : std::string(); }
  std::vector<int64_t> shape(const char* name) const {
    hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
    if (d < 0) fail(std::string("the dataset '") + name + "' is missing");
    hid_t fs = H5Dget_space(d);
    const int rank = H5Sget_simple_extent_ndims(fs);
    std::vector<hsize_t> dims(size_t(std::max(rank, 0)));
    if (rank > 0) H5Sget_simple_extent_dims(fs, dims.data(), nullptr);
    H5Sclose(fs), H5Dclose(d);
    return {dims.begin(), dims.end()};
  }
  static std::string shape_str(const std::vector<int64_t>& s) {
    std::string out = "(";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + (s.size() == 1 ? ",)" : ")");
  }
  void expect_shape(const char* name, const std::vector<int64_t>& want, const char* why) const {
    const auto got = shape(name);
    if (got != want) fail(std::string(name) + " has shape " + shape_str(got) + ", expected " + shape_str(want) + " " + why);
  }
  // A CSR offsets array: starts at 0, never decreases, ends at `last`.
  void expect_offsets(const char* name, const std::vector<int64_t>& off, int64_t last, const char* what) const {
    if (off.empty() || off.front() != 0) fail(std::string(name) + " must start with 0");
    for (size_t i = 1; i < off.size(); ++i)
      if (off[i] < off[i - 1])
        fail(std::string(name) + " decreases at entry " + std::to_string(i) + " (" + std::to_string(off[i - 1]) + " then " +
             std::to_string(off[i]) + ")");
    if (off.back() != last)
      fail(std::string(name) + " ends at " + std::to_string(off.back()) + " but " + what + " holds " + std::to_string(last));
  }
  // Rows [begin, end) of a dataset whose rows hold `row` elements, converted to `type` (kFileType: as stored).
  template <class T>
  std::vector<T> rows(const char* name, hid_t type, int64_t begin, int64_t end, int64_t row = 1) const {
    hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
    if (d < 0) fail(std::string("the dataset '") + name + "' is missing");
    hid_t fs = H5Dget_space(d);
    const int rank = H5Sget_simple_extent_ndims(fs);
    std::vector<hsize_t> dims(rank);
    H5Sget_simple_extent_dims(fs, dims.data(), nullptr);
    int64_t per_row = 1;
    for (int i = 1; i < rank; ++i) per_row *= int64_t(dims[size_t(i)]);
    if (rank < 1 || per_row != row) {
      H5Sclose(fs), H5Dclose(d);
      fail(std::string(name) + ": rows hold " + std::to_string(per_row) + " elements, expected " + std::to_string(row));
    }
    if (end < 0) end = int64_t(dims[0]);
    if (begin < 0 || begin > end || hsize_t(end) > dims[0]) {
      H5Sclose(fs), H5Dclose(d);
      fail(std::string(name) + ": rows [" + std::to_string(begin) + ", " + std::to_string(end) + ") are outside its " +
           std::to_string(dims[0]) + " rows");
    }
    std::vector<T> out(size_t((end - begin) * row));
    if (!out.empty()) {
      std::vector<hsize_t> start(rank, 0), count(dims);
      start[0] = hsize_t(begin), count[0] = hsize_t(end - begin);
      H5Sselect_hyperslab(fs, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
      hid_t ms = H5Screate_simple(rank, count.data(), nullptr);
      const hid_t mt = type == kFileType ? H5Dget_type(d) : type;
      const size_t stored = H5Tget_size(mt);
      if (type == kFileType && stored != sizeof(T)) {
        H5Tclose(mt), H5Sclose(ms), H5Sclose(fs), H5Dclose(d);
        fail(std::string(name) + ": stored elements are " + std::to_string(stored) + " bytes, expected " +
             std::to_string(sizeof(T)));
      }
      const herr_t e = H5Dread(d, mt, ms, fs, H5P_DEFAULT, out.data());
      if (type == kFileType) H5Tclose(mt);
      H5Sclose(ms);
      if (e < 0) {
        H5Sclose(fs), H5Dclose(d);
        fail(std::string("cannot read ") + name);
      }
    }
    H5Sclose(fs), H5Dclose(d);
    return out;
  }
  // A whole dataset, scalar or not, flattened.
  template <class T>
  std::vector<T> whole(const char* name, hid_t type) const {
    const auto s = shape(name);
    int64_t row = 1;
    for (size_t i = 1; i < s.size(); ++i) row *= s[i];
    if (!s.empty()) return rows<T>(name, type, 0, -1, row);
    hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
    T v{};
    const herr_t e = H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v);
    H5Dclose(d);
    if (e < 0) fail(std::string("cannot read ") + name);
    return {v};
  }
};

GateLogReader::GateLogReader(const std::string& path) : impl_(new Impl) {
  Impl& m = *impl_;
  m.path = path;
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  if (H5Fis_hdf5(path.c_str()) <= 0) throw FileError(path, "not an HDF5 file (or unreadable)");
  m.file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (m.file < 0) throw FileError(path, "cannot open the HDF5 file");
  LogInfo& i = info_;
  i.path = path;
  if (!m.has_attr("schema_version")) m.fail("not a gate log (no schema_version attribute; spkv run writes them)");
  i.schema_version = m.num<int>("schema_version", H5T_NATIVE_INT);
  if (i.schema_version > kSchemaVersion)
    m.fail("gate-log schema version " + std::to_string(i.schema_version) + " is newer than this build reads (" +
           std::to_string(kSchemaVersion) + "); update spkv");
  i.gating_mode = m.str("gating_mode"), i.model_path = m.str("model_path"), i.created = m.str("created");
  i.git_commit = m.str("git_commit"), i.checkpoint_sha256 = m.str("checkpoint_sha256");
  i.model_config = m.str("model_config");
  i.tokenizer = m.str_or_empty("tokenizer"), i.inputs = m.str_or_empty("inputs"), i.split_policy = m.str_or_empty("split_policy");
  i.complete = m.num<int>("complete", H5T_NATIVE_INT) != 0;
  i.tau = m.num<double>("tau", H5T_NATIVE_DOUBLE);
  i.window = m.num<int64_t>("window", H5T_NATIVE_INT64), i.keep_first = m.num<int64_t>("keep_first", H5T_NATIVE_INT64);
  i.n_layers = m.num<int64_t>("n_layers", H5T_NATIVE_INT64), i.n_kv_heads = m.num<int64_t>("n_kv_heads", H5T_NATIVE_INT64);
  if (m.has_attr("attention_last_queries"))
    i.attention_last_queries = m.num<int64_t>("attention_last_queries", H5T_NATIVE_INT64);
  i.attention_far = exists(schema::kReceivedFar);
  i.evictions = exists(schema::kEvictedAt);
  i.policy = m.str_or_empty("policy"), i.budget = m.str_or_empty("budget");
  i.tool_version = m.str_or_empty("tool_version"), i.tap = m.str_or_empty("tap");
  if (m.has_attr("context")) i.context = m.num<int64_t>("context", H5T_NATIVE_INT64);
  if (m.has_attr("chunk")) i.chunk = m.num<int64_t>("chunk", H5T_NATIVE_INT64);
  if (m.has_attr("shard_count")) {
    i.shard_count = m.num<int64_t>("shard_count", H5T_NATIVE_INT64);
    i.shard_index = m.num<int64_t>("shard_index", H5T_NATIVE_INT64);
    i.shard_first_document = m.num<int64_t>("shard_first_document", H5T_NATIVE_INT64);
    i.corpus_documents = m.num<int64_t>("corpus_documents", H5T_NATIVE_INT64);
  }
  // Sanity of the attributes that size everything else, then every shape and offsets array against them:
  // a damaged file gives an error naming the dataset, never an out-of-bounds read.
  auto in_range = [&](const char* name, double v, double lo, double hi) {
    if (!(v >= lo && v <= hi)) m.fail(std::string("root attribute '") + name + "' is " + std::to_string(v) +
                                      ", expected a value in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  };
  in_range("n_layers", double(i.n_layers), 1, 4096), in_range("n_kv_heads", double(i.n_kv_heads), 1, 4096);
  in_range("window", double(i.window), 0, double(int64_t(1) << 40)), in_range("keep_first", double(i.keep_first), 0, double(int64_t(1) << 40));
  in_range("tau", i.tau, 0, 1);
  token_offsets_ = m.rows<int64_t>(schema::kDocTokenOffsets, H5T_NATIVE_INT64, 0, -1);
  if (token_offsets_.empty()) m.fail("documents/token_offsets is empty (it starts with 0)");
  auto length = [&](const char* name) {  // of a one-dimensional dataset
    const auto s = m.shape(name);
    if (s.size() != 1) m.fail(std::string(name) + " must be one-dimensional, has shape " + Impl::shape_str(s));
    return s[0];
  };
  const int64_t N = length(schema::kIds);
  m.expect_offsets(schema::kDocTokenOffsets, token_offsets_, N, schema::kIds);
  i.n_documents = int64_t(token_offsets_.size()) - 1, i.n_tokens = token_offsets_.back();
  const int64_t D = i.n_documents, L = i.n_layers, H = i.n_kv_heads, LH = L * H;
  const char* per_token = "(tokens x n_layers x n_kv_heads, from the attributes and documents/token_offsets)";
  m.expect_shape(schema::kU, {N, L, H}, per_token), m.expect_shape(schema::kZ, {N, L, H}, per_token);
  for (const char* name : {schema::kNll, schema::kCacheEntries}) m.expect_shape(name, {N}, "(one per token)");
  m.expect_shape(schema::kTextOffsets, {N + 1}, "(tokens + 1)");
  for (const char* name : {schema::kReceived, schema::kReceivedLast, schema::kReceivedFar, schema::kEvictedAt})
    if (exists(name)) m.expect_shape(name, {N, L, H}, per_token);
  const char* per_doc = "(documents x n_layers x n_kv_heads)";
  m.expect_shape(schema::kDocKept, {D, L, H}, per_doc), m.expect_shape(schema::kDocEligible, {D, L, H}, per_doc);
  kept_ = m.rows<int64_t>(schema::kDocKept, H5T_NATIVE_INT64, 0, D, LH);
  eligible_ = m.rows<int64_t>(schema::kDocEligible, H5T_NATIVE_INT64, 0, D, LH);
  for (size_t k = 0; k < kept_.size(); ++k)
    if (kept_[k] < 0 || kept_[k] > eligible_[k])
      m.fail("documents/kept[" + std::to_string(k / size_t(LH)) + "] = " + std::to_string(kept_[k]) +
             " is outside [0, eligible = " + std::to_string(eligible_[k]) + "]");
  m.expect_shape(schema::kDocIdOffsets, {D + 1}, "(documents + 1)");
  const auto id_off = m.rows<int64_t>(schema::kDocIdOffsets, H5T_NATIVE_INT64, 0, D + 1);
  m.expect_offsets(schema::kDocIdOffsets, id_off, length(schema::kDocIdBytes), schema::kDocIdBytes);
  // Bytes are read as uint8: converting them to (signed) char would clip every non-ASCII byte to 127.
  const auto id_bytes = m.rows<uint8_t>(schema::kDocIdBytes, H5T_NATIVE_UINT8, 0, id_off.back());
  for (int64_t d = 0; d < D; ++d) ids_.emplace_back(id_bytes.begin() + id_off[d], id_bytes.begin() + id_off[d + 1]);
}

GateLogReader::~GateLogReader() {
  if (impl_ && impl_->file >= 0) H5Fclose(impl_->file);
}

std::vector<float> GateLogReader::u(int64_t begin, int64_t end) const {
  return impl_->rows<float>(schema::kU, H5T_NATIVE_FLOAT, begin, end, info_.n_layers * info_.n_kv_heads);
}
std::vector<uint16_t> GateLogReader::u_bits(int64_t begin, int64_t end) const {
  return impl_->rows<uint16_t>(schema::kU, kFileType, begin, end, info_.n_layers * info_.n_kv_heads);
}
std::vector<uint8_t> GateLogReader::z(int64_t begin, int64_t end) const {
  return impl_->rows<uint8_t>(schema::kZ, H5T_NATIVE_UINT8, begin, end, info_.n_layers * info_.n_kv_heads);
}
std::vector<int32_t> GateLogReader::evicted_at(int64_t begin, int64_t end) const {
  if (!info_.evictions) throw FileError(info_.path, "no gates/evicted_at: not a policy log (spkv run --policy)");
  return impl_->rows<int32_t>(schema::kEvictedAt, H5T_NATIVE_INT32, begin, end, info_.n_layers * info_.n_kv_heads);
}
std::vector<float> GateLogReader::received(int64_t begin, int64_t end) const {
  return impl_->rows<float>(schema::kReceived, H5T_NATIVE_FLOAT, begin, end, info_.n_layers * info_.n_kv_heads);
}
std::vector<float> GateLogReader::received_last(int64_t begin, int64_t end) const {
  return impl_->rows<float>(schema::kReceivedLast, H5T_NATIVE_FLOAT, begin, end, info_.n_layers * info_.n_kv_heads);
}
std::vector<float> GateLogReader::received_far(int64_t begin, int64_t end) const {
  return impl_->rows<float>(schema::kReceivedFar, H5T_NATIVE_FLOAT, begin, end, info_.n_layers * info_.n_kv_heads);
}
std::vector<int32_t> GateLogReader::token_ids(int64_t begin, int64_t end) const {
  return impl_->rows<int32_t>(schema::kIds, H5T_NATIVE_INT32, begin, end);
}
std::vector<float> GateLogReader::nll(int64_t begin, int64_t end) const {
  return impl_->rows<float>(schema::kNll, H5T_NATIVE_FLOAT, begin, end);
}
std::vector<int32_t> GateLogReader::cache_entries(int64_t begin, int64_t end) const {
  return impl_->rows<int32_t>(schema::kCacheEntries, H5T_NATIVE_INT32, begin, end);
}
std::vector<int32_t> GateLogReader::positions(int64_t begin, int64_t end) const {
  return impl_->rows<int32_t>(schema::kPosition, H5T_NATIVE_INT32, begin, end);
}
std::vector<int64_t> GateLogReader::shape(const std::string& dataset) const { return impl_->shape(dataset.c_str()); }
std::vector<int64_t> GateLogReader::whole_int64(const std::string& dataset) const {
  return impl_->whole<int64_t>(dataset.c_str(), H5T_NATIVE_INT64);
}
std::vector<double> GateLogReader::whole_double(const std::string& dataset) const {
  return impl_->whole<double>(dataset.c_str(), H5T_NATIVE_DOUBLE);
}
bool GateLogReader::exists(const std::string& path) const {
  // Each prefix must exist before the next is asked for (H5Lexists on "a/b" fails when "a" is missing).
  for (size_t p = path.find('/'); ; p = path.find('/', p + 1)) {
    if (H5Lexists(impl_->file, path.substr(0, p).c_str(), H5P_DEFAULT) <= 0) return false;
    if (p == std::string::npos) return true;
  }
}
std::vector<std::string> GateLogReader::attribute_strings(const std::string& object, const std::string& name) const {
  const std::string where = object == "/" ? "the root" : object;
  if (H5Aexists_by_name(impl_->file, object.c_str(), name.c_str(), H5P_DEFAULT) <= 0)
    impl_->fail("the attribute '" + name + "' of " + where + " is missing");
  hid_t a = H5Aopen_by_name(impl_->file, object.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT);
  hid_t ft = H5Aget_type(a), sp = H5Aget_space(a);
  const hssize_t n = H5Sget_simple_extent_npoints(sp);
  std::vector<std::string> out;
  if (H5Tget_class(ft) == H5T_STRING && H5Tis_variable_str(ft) > 0 && n >= 0) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE), H5Tset_cset(t, H5T_CSET_UTF8);
    std::vector<char*> c(size_t(n), nullptr);
    if (H5Aread(a, t, c.data()) >= 0)
      for (char* x : c) out.emplace_back(x ? x : "");
    H5Dvlen_reclaim(t, sp, H5P_DEFAULT, c.data());
    H5Tclose(t);
  }
  H5Sclose(sp), H5Tclose(ft), H5Aclose(a);
  if (out.size() != size_t(std::max<hssize_t>(n, 0)) || n < 0)
    impl_->fail("the attribute '" + name + "' of " + where + " is not a variable-length string");
  return out;
}
std::vector<std::string> GateLogReader::token_text(int64_t begin, int64_t end) const {
  const auto off = impl_->rows<int64_t>(schema::kTextOffsets, H5T_NATIVE_INT64, begin, end + 1);
  for (size_t t = 1; t < off.size(); ++t)
    if (off[t] < off[t - 1]) impl_->fail("tokens/text_offsets decreases at entry " + std::to_string(begin + int64_t(t)));
  const auto bytes = impl_->rows<uint8_t>(schema::kTextBytes, H5T_NATIVE_UINT8, off.front(), off.back());
  std::vector<std::string> out;
  for (size_t t = 0; t + 1 < off.size(); ++t)
    out.emplace_back(bytes.begin() + (off[t] - off.front()), bytes.begin() + (off[t + 1] - off.front()));
  return out;
}

}  // namespace spkv
