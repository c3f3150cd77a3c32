// The gate log writer on HDF5's C API: extendible datasets chunked along the token axis (shuffle +
// deflate), handles resolved once, one writer thread that appends queued documents in blocks and flushes
// after each block. The layout is documented field by field in docs/hdf5-schema.md.
#include "core/gatelog/writer.h"

#include <fcntl.h>
#include <hdf5.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/base/errors.h"

namespace spkv {
namespace {

// An extendible dataset: rows along the first axis, `inner` fixed trailing dims.
struct Extendible {
  hid_t id = -1, type = -1;
  std::vector<hsize_t> inner;
  hsize_t rows = 0;
  hsize_t row_elems() const {
    hsize_t n = 1;
    for (auto d : inner) n *= d;
    return n;
  }
};

}  // namespace

// spkv's own lock on a log being written, OUT.h5.lock holding "host pid": HDF5's file locking is off on
// most NFS and Lustre mounts (HDF5_USE_FILE_LOCKING=FALSE), where two writers would corrupt the log. A
// lock left by a process of this host that no longer runs is taken over.
class WriterLock {
 public:
  explicit WriterLock(const std::string& log) : path_(log + ".lock") {
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    const std::string me = std::string(host) + " " + std::to_string(getpid()) + "\n";
    for (int attempt = 0; attempt < 2; ++attempt) {
      const int fd = open(path_.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
      if (fd >= 0) {
        const bool ok = write(fd, me.data(), me.size()) == ssize_t(me.size());
        ::close(fd);
        if (!ok) throw FileError(path_, std::string("cannot write the lock file: ") + std::strerror(errno));
        owned_ = true;
        return;
      }
      if (errno != EEXIST) throw FileError(path_, std::string("cannot create the lock file: ") + std::strerror(errno));
      std::ifstream in(path_);
      std::string other_host;
      long other_pid = -1;
      in >> other_host >> other_pid;
      const bool stale = other_host == host && other_pid > 0 && kill(pid_t(other_pid), 0) != 0 && errno == ESRCH;
      if (!stale)
        throw FileError(log, "being written by " + (other_host.empty() ? std::string("another process") : other_host) +
                                 " pid " + std::to_string(other_pid) + " (lock file " + path_ +
                                 "; remove it if that process is gone)");
      std::remove(path_.c_str());
    }
    throw FileError(path_, "cannot take the lock file over");
  }
  ~WriterLock() {
    if (owned_) std::remove(path_.c_str());
  }
  WriterLock(const WriterLock&) = delete;
  WriterLock& operator=(const WriterLock&) = delete;

 private:
  std::string path_;
  bool owned_ = false;
};

struct GateLogWriter::Impl {
  std::unique_ptr<WriterLock> lock;  // taken before anything is read or written
  std::string path;
  GateLogHeader h;
  hid_t file = -1, f16 = -1;
  Extendible ids, nll, position, cache_entries, text_offsets, text_bytes, u, z, evicted_at, received, received_last, received_far;
  Extendible doc_tokens, doc_id_offsets, doc_id_bytes, doc_kept, doc_eligible;
  std::vector<int64_t> kept_total, eligible_total;  // (L, Hkv)
  int64_t n_docs = 0;

  // Crash safety: freed file space is never reused and the metadata cache never evicts, so between two
  // flushes nothing that the last flushed metadata points to is overwritten. A killed run leaves the file
  // as of its last flush (old versions of rewritten chunks become unreachable garbage; close() compacts).
  static hid_t access_plist() {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5AC_cache_config_t mdc;
    mdc.version = H5AC__CURR_CACHE_CONFIG_VERSION;
    H5Pget_mdc_config(fapl, &mdc);
    mdc.evictions_enabled = false, mdc.incr_mode = H5C_incr__off, mdc.flash_incr_mode = H5C_flash_incr__off;
    mdc.decr_mode = H5C_decr__off;
    H5Pset_mdc_config(fapl, &mdc);
    return fapl;
  }
  static hid_t create_plist() {
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    H5Pset_file_space_strategy(fcpl, H5F_FSPACE_STRATEGY_NONE, false, 1);
    return fcpl;
  }

  [[noreturn]] void fail(const std::string& what) const { throw FileError(path, "HDF5: " + what); }
  hid_t check(hid_t id, const std::string& what) const {
    if (id < 0) fail(what);
    return id;
  }
  void check(herr_t e, const char* what) const {  // errno says why a write failed (ENOSPC: a full disk)
    if (e < 0) fail(std::string(what) + (errno ? std::string(": ") + std::strerror(errno) : std::string()));
  }

  // --- attributes --------------------------------------------------------------------------------------
  void attr_str(hid_t loc, const char* name, const std::string& value) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE), H5Tset_cset(t, H5T_CSET_UTF8);
    hid_t s = H5Screate(H5S_SCALAR);
    if (H5Aexists(loc, name) > 0) H5Adelete(loc, name);
    hid_t a = check(H5Acreate2(loc, name, t, s, H5P_DEFAULT, H5P_DEFAULT), std::string("attribute ") + name);
    const char* c = value.c_str();
    check(H5Awrite(a, t, &c), name);
    H5Aclose(a), H5Sclose(s), H5Tclose(t);
  }
  void attr_strs(hid_t loc, const char* name, const std::vector<std::string>& values) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE), H5Tset_cset(t, H5T_CSET_UTF8);
    const hsize_t n = values.size();
    hid_t s = H5Screate_simple(1, &n, nullptr);
    hid_t a = check(H5Acreate2(loc, name, t, s, H5P_DEFAULT, H5P_DEFAULT), std::string("attribute ") + name);
    std::vector<const char*> c;
    for (auto& v : values) c.push_back(v.c_str());
    check(H5Awrite(a, t, c.data()), name);
    H5Aclose(a), H5Sclose(s), H5Tclose(t);
  }
  template <class T>
  void attr_num(hid_t loc, const char* name, hid_t type, T value) {
    hid_t s = H5Screate(H5S_SCALAR);
    if (H5Aexists(loc, name) > 0) H5Adelete(loc, name);
    hid_t a = check(H5Acreate2(loc, name, type, s, H5P_DEFAULT, H5P_DEFAULT), std::string("attribute ") + name);
    check(H5Awrite(a, type, &value), name);
    H5Aclose(a), H5Sclose(s);
  }
  std::string read_attr_str(const char* name) {
    hid_t a = check(H5Aopen(file, name, H5P_DEFAULT), std::string("root attribute '") + name + "' is missing");
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE), H5Tset_cset(t, H5T_CSET_UTF8);
    char* c = nullptr;
    check(H5Aread(a, t, &c), name);
    std::string out = c ? c : "";
    H5free_memory(c), H5Tclose(t), H5Aclose(a);
    return out;
  }
  template <class T>
  T read_attr_num(const char* name, hid_t type) {
    hid_t a = check(H5Aopen(file, name, H5P_DEFAULT), std::string("root attribute '") + name + "' is missing");
    T v{};
    check(H5Aread(a, type, &v), name);
    H5Aclose(a);
    return v;
  }

  // --- datasets ----------------------------------------------------------------------------------------
  hid_t group(const char* name, const char* nx_class) {
    hid_t g = H5Lexists(file, name, H5P_DEFAULT) > 0 ? H5Gopen2(file, name, H5P_DEFAULT)
                                                      : H5Gcreate2(file, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    check(g, std::string("group ") + name);
    if (nx_class) attr_str(g, "NX_class", nx_class);
    return g;
  }
  // chunk_bytes: the target chunk size (0.1-1 MiB); rows per chunk follow from the row size.
  Extendible create(const char* name, hid_t type, std::vector<hsize_t> inner, hsize_t chunk_bytes = 256 << 10) {
    Extendible e;
    e.type = type, e.inner = inner;
    const hsize_t rank = 1 + inner.size(), row_bytes = e.row_elems() * H5Tget_size(type);
    std::vector<hsize_t> dims{0}, maxdims{H5S_UNLIMITED}, chunk{std::max<hsize_t>(16, chunk_bytes / row_bytes)};
    for (auto d : inner) dims.push_back(d), maxdims.push_back(d), chunk.push_back(d);
    hid_t s = H5Screate_simple(int(rank), dims.data(), maxdims.data());
    hid_t p = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(p, int(rank), chunk.data()), H5Pset_shuffle(p), H5Pset_deflate(p, 4);
    e.id = check(H5Dcreate2(file, name, type, s, H5P_DEFAULT, p, H5P_DEFAULT), std::string("create ") + name);
    H5Pclose(p), H5Sclose(s);
    return e;
  }
  Extendible open(const char* name, hid_t type, std::vector<hsize_t> inner) {
    Extendible e;
    e.type = type, e.inner = inner;
    e.id = check(H5Dopen2(file, name, H5P_DEFAULT), std::string("dataset ") + name + " is missing");
    hid_t s = H5Dget_space(e.id);
    std::vector<hsize_t> dims(1 + inner.size());
    if (H5Sget_simple_extent_ndims(s) != int(dims.size())) fail(std::string(name) + " has the wrong rank");
    H5Sget_simple_extent_dims(s, dims.data(), nullptr);
    H5Sclose(s);
    for (size_t i = 0; i < inner.size(); ++i)
      if (dims[i + 1] != inner[i]) fail(std::string(name) + " has a shape that does not match the model");
    e.rows = dims[0];
    return e;
  }
  void append(Extendible& e, const void* data, hsize_t rows) {
    if (rows == 0) return;
    errno = 0;
    std::vector<hsize_t> size{e.rows + rows}, start{e.rows}, count{rows};
    for (auto d : e.inner) size.push_back(d), start.push_back(0), count.push_back(d);
    check(H5Dset_extent(e.id, size.data()), "extend");
    hid_t fs = H5Dget_space(e.id);
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
    hid_t ms = H5Screate_simple(int(count.size()), count.data(), nullptr);
    check(H5Dwrite(e.id, e.type, ms, fs, H5P_DEFAULT, data), "write");
    H5Sclose(ms), H5Sclose(fs);
    e.rows += rows;
  }
  void truncate(Extendible& e, hsize_t rows) {
    std::vector<hsize_t> size{rows};
    for (auto d : e.inner) size.push_back(d);
    check(H5Dset_extent(e.id, size.data()), "truncate");
    e.rows = rows;
  }
  template <class T>
  std::vector<T> read(const Extendible& e, hid_t mem_type) {
    std::vector<T> out(e.rows * e.row_elems());
    if (!out.empty()) check(H5Dread(e.id, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), "read");
    return out;
  }
  // A small fixed-shape dataset, overwritten after each block.
  void put(hid_t loc, const char* name, hid_t type, std::vector<hsize_t> dims, const void* data) {
    hid_t d;
    if (H5Lexists(loc, name, H5P_DEFAULT) > 0) {
      d = H5Dopen2(loc, name, H5P_DEFAULT);
    } else {
      // Compact: the values live in the dataset's object header, metadata that the cache holds until the
      // next flush, so a rewrite reaches the file in the same flush as the documents it sums.
      hid_t s = dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(int(dims.size()), dims.data(), nullptr);
      hid_t p = H5Pcreate(H5P_DATASET_CREATE);
      H5Pset_layout(p, H5D_COMPACT);
      d = H5Dcreate2(loc, name, type, s, H5P_DEFAULT, p, H5P_DEFAULT);
      H5Pclose(p), H5Sclose(s);
    }
    check(d, std::string("dataset ") + name);
    check(H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), name);
    H5Dclose(d);
  }

  void datasets(bool fresh) {
    const hsize_t L = hsize_t(h.n_layers), Hkv = hsize_t(h.n_kv_heads);
    auto make = [&](const char* name, hid_t type, std::vector<hsize_t> inner) {
      return fresh ? create(name, type, inner) : open(name, type, inner);
    };
    ids = make(schema::kIds, H5T_NATIVE_INT32, {});
    nll = make(schema::kNll, H5T_NATIVE_FLOAT, {});
    position = make(schema::kPosition, H5T_NATIVE_INT32, {});
    cache_entries = make(schema::kCacheEntries, H5T_NATIVE_INT32, {});
    text_offsets = make(schema::kTextOffsets, H5T_NATIVE_INT64, {});
    text_bytes = make(schema::kTextBytes, H5T_NATIVE_UINT8, {});
    u = make(schema::kU, f16, {L, Hkv});
    z = make(schema::kZ, H5T_NATIVE_UINT8, {L, Hkv});
    if (h.gating_mode == "policy") evicted_at = make(schema::kEvictedAt, H5T_NATIVE_INT32, {L, Hkv});
    if (h.last_queries > 0) {
      received = make(schema::kReceived, H5T_NATIVE_FLOAT, {L, Hkv});
      received_last = make(schema::kReceivedLast, H5T_NATIVE_FLOAT, {L, Hkv});
      received_far = make(schema::kReceivedFar, H5T_NATIVE_FLOAT, {L, Hkv});
    }
    doc_tokens = make(schema::kDocTokenOffsets, H5T_NATIVE_INT64, {});
    doc_id_offsets = make(schema::kDocIdOffsets, H5T_NATIVE_INT64, {});
    doc_id_bytes = make(schema::kDocIdBytes, H5T_NATIVE_UINT8, {});
    doc_kept = make(schema::kDocKept, H5T_NATIVE_INT64, {L, Hkv});
    doc_eligible = make(schema::kDocEligible, H5T_NATIVE_INT64, {L, Hkv});
    // The CSR offsets start with 0, so that a log with no documents yet is already well-formed.
    const int64_t zero = 0;
    for (Extendible* e : {&text_offsets, &doc_tokens, &doc_id_offsets})
      if (e->rows == 0) append(*e, &zero, 1);
  }

  void header() {
    attr_str(file, "NX_class", "NXroot");
    attr_str(file, "default", schema::kSummary);
    attr_num(file, "schema_version", H5T_NATIVE_INT, schema::kVersion);
    attr_str(file, "tool_version", h.tool_version);
    attr_str(file, "git_commit", h.git_commit);
    attr_str(file, "created", h.created);
    attr_str(file, "model_path", h.model_path);
    attr_str(file, "model_config", h.model_config_json);
    attr_str(file, "checkpoint_sha256", h.checkpoint_sha256);
    attr_str(file, "tokenizer", h.tokenizer_path);
    attr_str(file, "gating_mode", h.gating_mode);
    if (h.gating_mode == "policy") attr_str(file, "policy", h.policy), attr_str(file, "budget", h.budget);
    attr_str(file, "tap", h.tap);
    attr_num(file, "tau", H5T_NATIVE_DOUBLE, h.tau);
    attr_num(file, "window", H5T_NATIVE_INT64, h.window);
    attr_num(file, "keep_first", H5T_NATIVE_INT64, h.keep_first);
    attr_num(file, "context", H5T_NATIVE_INT64, h.context);
    attr_num(file, "chunk", H5T_NATIVE_INT64, h.chunk);
    attr_num(file, "n_layers", H5T_NATIVE_INT64, h.n_layers);
    attr_num(file, "n_kv_heads", H5T_NATIVE_INT64, h.n_kv_heads);
    attr_num(file, "attention_last_queries", H5T_NATIVE_INT64, h.last_queries);
    attr_str(file, "inputs", h.inputs_json);
    attr_str(file, "split_policy", h.split_policy);
    if (h.shard_count > 0) {
      attr_num(file, "shard_index", H5T_NATIVE_INT64, h.shard_index);
      attr_num(file, "shard_count", H5T_NATIVE_INT64, h.shard_count);
      attr_num(file, "shard_first_document", H5T_NATIVE_INT64, h.shard_first_document);
      attr_num(file, "corpus_documents", H5T_NATIVE_INT64, h.corpus_documents);
    }
    attr_num(file, "complete", H5T_NATIVE_INT, 0);
  }

  // Checks that a partial log can be resumed with these settings, reading it without changing a byte.
  void check_resumable() {
    file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) throw FileError(path, "cannot open it as an HDF5 gate log to resume");
    if (read_attr_num<int>("schema_version", H5T_NATIVE_INT) != schema::kVersion)
      fail("schema_version is not " + std::to_string(schema::kVersion));
    auto same_str = [&](const char* name, const std::string& want) {
      const std::string got = read_attr_str(name);
      if (got != want) throw FileError(path, "cannot resume: " + std::string(name) + " is '" + got + "' in the log but '" + want + "' now");
    };
    auto same_num = [&](const char* name, double want) {
      const double got = read_attr_num<double>(name, H5T_NATIVE_DOUBLE);
      if (got != want) throw FileError(path, "cannot resume: " + std::string(name) + " is " + std::to_string(got) + " in the log but " + std::to_string(want) + " now");
    };
    same_str("checkpoint_sha256", h.checkpoint_sha256);
    same_str("gating_mode", h.gating_mode);
    if (h.gating_mode == "policy") same_str("policy", h.policy), same_str("budget", h.budget);
    same_num("tau", h.tau), same_num("window", double(h.window)), same_num("keep_first", double(h.keep_first));
    same_num("n_layers", double(h.n_layers)), same_num("n_kv_heads", double(h.n_kv_heads));
    same_num("attention_last_queries", double(h.last_queries));
    if (h.shard_count > 0) {
      same_num("shard_index", double(h.shard_index)), same_num("shard_count", double(h.shard_count));
      same_num("shard_first_document", double(h.shard_first_document));
      same_num("corpus_documents", double(h.corpus_documents));
    }
    H5Fclose(file);
    file = -1;
  }

  // Reopens a checked partial log for writing: rows past the last complete document go.
  std::vector<Extendible*> token_datasets() {  // (N, ...) rows, one per token
    std::vector<Extendible*> out;
    for (Extendible* e : {&ids, &nll, &position, &cache_entries, &u, &z, &evicted_at, &received, &received_last, &received_far})
      if (e->id >= 0) out.push_back(e);  // the evictions and the attention statistics may be absent
    return out;
  }
  // Cuts every dataset to the longest prefix of documents that is whole: index entries that start at 0
  // and never decrease, and every row they point to present. What a kill or a full disk cut off (a
  // dataset extended but its write failed, leaving fill values) goes; the documents before it stay. The
  // rows are re-read from the file, since a failed append may have extended a dataset without counting it.
  void cut_to_whole_documents() {
    for (Extendible* e : {&ids, &nll, &position, &cache_entries, &text_offsets, &text_bytes, &u, &z, &evicted_at, &received,
                          &received_last, &received_far, &doc_tokens, &doc_id_offsets, &doc_id_bytes, &doc_kept, &doc_eligible}) {
      if (e->id < 0) continue;
      hid_t sp = H5Dget_space(e->id);
      std::vector<hsize_t> dims(1 + e->inner.size());
      H5Sget_simple_extent_dims(sp, dims.data(), nullptr);
      H5Sclose(sp);
      e->rows = dims[0];
    }
    const auto tok_off = read<int64_t>(doc_tokens, H5T_NATIVE_INT64), id_off = read<int64_t>(doc_id_offsets, H5T_NATIVE_INT64);
    const auto text_off = read<int64_t>(text_offsets, H5T_NATIVE_INT64);
    if (tok_off.empty() || id_off.empty() || tok_off[0] != 0 || id_off[0] != 0 || text_off.empty())
      fail("documents/token_offsets, id_offsets or tokens/text_offsets is empty or does not start with 0");
    hsize_t token_rows = text_off.size() - 1;
    for (Extendible* e : token_datasets()) token_rows = std::min(token_rows, e->rows);
    int64_t text_ok = 0;  // text_offsets are whole up to this token
    while (hsize_t(text_ok) < token_rows && text_off[size_t(text_ok) + 1] >= text_off[size_t(text_ok)] &&
           hsize_t(text_off[size_t(text_ok) + 1]) <= text_bytes.rows)
      ++text_ok;
    int64_t D = 0;
    const size_t n = std::min({tok_off.size(), id_off.size(), size_t(doc_kept.rows) + 1, size_t(doc_eligible.rows) + 1});
    while (size_t(D) + 1 < n) {
      const size_t d = size_t(D) + 1;
      if (tok_off[d] < tok_off[d - 1] || tok_off[d] > text_ok || id_off[d] < id_off[d - 1] || hsize_t(id_off[d]) > doc_id_bytes.rows)
        break;
      ++D;
    }
    n_docs = D;
    const hsize_t T = hsize_t(tok_off[size_t(D)]);
    for (Extendible* e : token_datasets()) truncate(*e, T);
    truncate(text_offsets, T + 1), truncate(text_bytes, hsize_t(text_off[T]));
    truncate(doc_tokens, hsize_t(D) + 1), truncate(doc_id_offsets, hsize_t(D) + 1);
    truncate(doc_kept, hsize_t(D)), truncate(doc_eligible, hsize_t(D)), truncate(doc_id_bytes, hsize_t(id_off[size_t(D)]));
  }

  std::vector<std::string> reopen() {
    datasets(false);
    cut_to_whole_documents();
    const auto id_off = read<int64_t>(doc_id_offsets, H5T_NATIVE_INT64);
    const auto kept = read<int64_t>(doc_kept, H5T_NATIVE_INT64), elig = read<int64_t>(doc_eligible, H5T_NATIVE_INT64);
    for (size_t i = 0; i < kept.size(); ++i) kept_total[i % kept_total.size()] += kept[i], eligible_total[i % kept_total.size()] += elig[i];
    const auto bytes = read<uint8_t>(doc_id_bytes, H5T_NATIVE_UINT8);
    std::vector<std::string> out;
    for (int64_t d = 0; d < n_docs; ++d) out.emplace_back(bytes.begin() + id_off[d], bytes.begin() + id_off[d + 1]);
    attr_num(file, "complete", H5T_NATIVE_INT, 0);
    return out;
  }

  void write(const LoggedDocument& d) {
    const hsize_t T = d.tokens.size(), LH = hsize_t(h.n_layers * h.n_kv_heads);
    if (d.text.size() != T || d.nll.size() != T || d.u.size() != T * LH || d.z.size() != T * LH ||
        d.cache_entries.size() != T || d.kept.size() != LH || d.eligible.size() != LH ||
        (received.id >= 0 && (d.received.size() != T * LH || d.received_last.size() != T * LH ||
                               d.received_far.size() != T * LH)) ||
        (evicted_at.id >= 0) != (d.evicted_at.size() == T * LH))
      throw Error("gate log: document '" + d.id + "' has arrays of inconsistent lengths");
    std::vector<int32_t> pos(T);
    std::vector<int64_t> offs(T);
    std::string bytes;
    const int64_t base = int64_t(text_bytes.rows);
    for (hsize_t t = 0; t < T; ++t) pos[t] = int32_t(t), bytes += d.text[t], offs[t] = base + int64_t(bytes.size());
    append(ids, d.tokens.data(), T), append(nll, d.nll.data(), T), append(position, pos.data(), T);
    append(cache_entries, d.cache_entries.data(), T);
    append(text_bytes, bytes.data(), bytes.size()), append(text_offsets, offs.data(), T);
    append(u, d.u.data(), T), append(z, d.z.data(), T);
    if (evicted_at.id >= 0) append(evicted_at, d.evicted_at.data(), T);
    if (received.id >= 0)
      append(received, d.received.data(), T), append(received_last, d.received_last.data(), T),
          append(received_far, d.received_far.data(), T);
    // The document index last: a document exists once its token_offsets entry does.
    const int64_t tok_end = int64_t(ids.rows), id_end = int64_t(doc_id_bytes.rows + d.id.size());
    append(doc_id_bytes, d.id.data(), d.id.size()), append(doc_id_offsets, &id_end, 1);
    append(doc_kept, d.kept.data(), 1), append(doc_eligible, d.eligible.data(), 1);
    append(doc_tokens, &tok_end, 1);
    for (size_t i = 0; i < LH; ++i) kept_total[i] += d.kept[i], eligible_total[i] += d.eligible[i];
    ++n_docs;
  }

  // Corpus totals and the NXdata heatmap: compact datasets (put) rewritten before each flush, which
  // commits them together with the documents they sum, so a killed run's summary matches its documents.
  void summary() {
    const hsize_t L = hsize_t(h.n_layers), Hkv = hsize_t(h.n_kv_heads);
    hid_t g = group(schema::kSummary, "NXentry");
    attr_str(g, "default", "density");
    put(file, schema::kSummaryKept, H5T_NATIVE_INT64, {L, Hkv}, kept_total.data());
    put(file, schema::kSummaryEligible, H5T_NATIVE_INT64, {L, Hkv}, eligible_total.data());
    std::vector<double> density(L * Hkv);
    int64_t k = 0, e = 0;
    for (size_t i = 0; i < density.size(); ++i) {
      density[i] = eligible_total[i] ? double(kept_total[i]) / double(eligible_total[i]) : std::nan("");
      k += kept_total[i], e += eligible_total[i];
    }
    const int64_t n_tokens = int64_t(ids.rows);
    const double overall = e ? double(k) / double(e) : std::nan("");
    put(file, schema::kNDocuments, H5T_NATIVE_INT64, {}, &n_docs);
    put(file, schema::kNTokens, H5T_NATIVE_INT64, {}, &n_tokens);
    put(file, schema::kOverallDensity, H5T_NATIVE_DOUBLE, {}, &overall);
    hid_t nx = group(schema::kDensityGroup, "NXdata");
    if (H5Aexists(nx, "signal") <= 0) {
      attr_str(nx, "signal", "density");
      attr_strs(nx, "axes", {"layer", "kv_head"});
      attr_str(nx, "title", "kept / eligible keys per layer and KV head");
    }
    std::vector<int64_t> layer(L), head(Hkv);
    for (hsize_t i = 0; i < L; ++i) layer[i] = int64_t(i);
    for (hsize_t i = 0; i < Hkv; ++i) head[i] = int64_t(i);
    put(file, schema::kDensity, H5T_NATIVE_DOUBLE, {L, Hkv}, density.data());
    put(file, schema::kDensityLayer, H5T_NATIVE_INT64, {L}, layer.data());
    put(file, schema::kDensityKvHead, H5T_NATIVE_INT64, {Hkv}, head.data());
    H5Gclose(nx), H5Gclose(g);
  }

  void flush() {
    errno = 0;
    check(H5Fflush(file, H5F_SCOPE_GLOBAL), "flush");
  }

  void close_file(bool complete) {
    if (file < 0) return;
    if (complete) attr_num(file, "complete", H5T_NATIVE_INT, 1);
    for (Extendible* e : {&ids, &nll, &position, &cache_entries, &text_offsets, &text_bytes, &u, &z, &evicted_at, &received,
                          &received_last, &received_far, &doc_tokens, &doc_id_offsets, &doc_id_bytes, &doc_kept, &doc_eligible})
      if (e->id >= 0) H5Dclose(e->id), e->id = -1;
    if (f16 >= 0) H5Tclose(f16), f16 = -1;
    H5Fclose(file);
    file = -1;
  }
};

namespace {
// Copies every root attribute of src to dst (variable-length strings included).
herr_t copy_attr(hid_t loc, const char* name, const H5A_info_t*, void* dst_file) {
  hid_t a = H5Aopen(loc, name, H5P_DEFAULT), t = H5Aget_type(a), sp = H5Aget_space(a);
  std::vector<char> buf(size_t(H5Sget_simple_extent_npoints(sp)) * H5Tget_size(t));
  herr_t ok = H5Aread(a, t, buf.data());
  hid_t b = H5Acreate2(*static_cast<hid_t*>(dst_file), name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
  if (ok >= 0 && b >= 0) ok = H5Awrite(b, t, buf.data());
  if (H5Tdetect_class(t, H5T_VLEN) > 0 || H5Tis_variable_str(t) > 0) H5Dvlen_reclaim(t, sp, H5P_DEFAULT, buf.data());
  if (b >= 0) H5Aclose(b);
  H5Sclose(sp), H5Tclose(t), H5Aclose(a);
  return ok < 0 || b < 0 ? -1 : 0;
}
}  // namespace

GateLogWriter::GateLogWriter(const std::string& path, const GateLogHeader& h, bool resume, double flush_seconds)
    : impl_(new Impl), path_(path), flush_seconds_(flush_seconds) {
  Impl& m = *impl_;
  m.lock = std::make_unique<WriterLock>(path);
  m.path = partial_path(path), m.h = h;
  m.kept_total.assign(h.n_layers * h.n_kv_heads, 0), m.eligible_total.assign(h.n_layers * h.n_kv_heads, 0);
  if (std::filesystem::exists(path)) throw FileError(path, "already exists (choose another --out, or remove it)");
  const bool partial = std::filesystem::exists(m.path);
  if (partial && !resume)
    throw FileError(m.path, "an interrupted run left this log; pass --resume to continue it, or remove it");
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // errors become FileError, not HDF5's stderr trace
  // IEEE half precision: 1 sign, 5 exponent, 10 mantissa bits (h5py reads it as float16).
  m.f16 = H5Tcopy(H5T_IEEE_F32LE);
  H5Tset_fields(m.f16, 15, 10, 5, 0, 10), H5Tset_size(m.f16, 2), H5Tset_ebias(m.f16, 15);
  hid_t fapl = Impl::access_plist();
  if (partial) {
    try {
      m.check_resumable();
      m.file = H5Fopen(m.path.c_str(), H5F_ACC_RDWR, fapl);
      if (m.file < 0) throw FileError(m.path, "cannot open it for writing");
      existing_ids_ = m.reopen();
    } catch (...) {
      H5Pclose(fapl);
      m.close_file(false);
      throw;
    }
  } else {
    hid_t fcpl = Impl::create_plist();
    m.file = H5Fcreate(m.path.c_str(), H5F_ACC_EXCL, fcpl, fapl);
    H5Pclose(fcpl);
    if (m.file < 0) throw FileError(m.path, "cannot create the gate log");
    for (const char* g : {schema::kTokens, schema::kGates, schema::kDocuments}) H5Gclose(m.group(g, nullptr));
    if (h.last_queries > 0) H5Gclose(m.group(schema::kAttention, nullptr));
    m.header();
    m.datasets(true);
    m.summary();
    m.flush();
  }
  H5Pclose(fapl);
  thread_ = std::thread([this] { run(); });
}

std::string GateLogWriter::partial_path(const std::string& path) { return path + ".partial"; }

void GateLogWriter::run() {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // this thread's errors become FileError too, without a trace
  using clock = std::chrono::steady_clock;
  auto last_flush = clock::now();
  bool dirty = false;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    const auto due = last_flush + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(flush_seconds_));
    auto ready = [&] { return closing_ || !queue_.empty(); };
    if (dirty) cv_.wait_until(lock, due, ready);
    else cv_.wait(lock, ready);
    std::deque<LoggedDocument> block;
    block.swap(queue_);
    const bool closing = closing_;
    cv_.notify_all();  // add() may be waiting for room
    lock.unlock();
    try {
      for (auto& d : block) impl_->write(d);
      dirty = dirty || !block.empty();
      if (dirty && (closing || clock::now() >= due)) {
        impl_->summary();
        impl_->flush();  // commits the documents and their summary
        last_flush = clock::now(), dirty = false;
      }
    } catch (...) {
      lock.lock();
      error_ = std::current_exception();
      queue_.clear();
      cv_.notify_all();
      return;
    }
    lock.lock();
    if (closing && queue_.empty()) return;
  }
}

void GateLogWriter::add(LoggedDocument d) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return queue_.size() < 64 || error_; });  // back-pressure: at most 64 queued
  if (error_) std::rethrow_exception(error_);
  queue_.push_back(std::move(d));
  cv_.notify_all();
}

void GateLogWriter::close() { finish(true); }

void GateLogWriter::finish(bool complete) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
  if (error_) {
    try {  // leave a partial log that every reader opens and --resume continues: whole documents only
      if (impl_->file >= 0) impl_->cut_to_whole_documents(), impl_->flush();
    } catch (...) {
    }
    impl_->close_file(false);
    std::rethrow_exception(error_);
  }
  impl_->close_file(complete);
  if (!complete || finished_) return;
  finished_ = true;
  // The finished log: the reachable objects of the partial file copied into a fresh one (no garbage from
  // rewritten chunks), renamed into place; then the partial file goes.
  const std::string tmp = path_ + ".tmp";
  hid_t src = H5Fopen(impl_->path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t dst = H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  bool ok = src >= 0 && dst >= 0;
  for (const char* g : {schema::kTokens, schema::kGates, schema::kDocuments, schema::kSummary, schema::kAttention})
    if (H5Lexists(src, g, H5P_DEFAULT) > 0) ok = ok && H5Ocopy(src, g, dst, g, H5P_DEFAULT, H5P_DEFAULT) >= 0;
  hsize_t idx = 0;
  ok = ok && H5Aiterate2(src, H5_INDEX_CRT_ORDER, H5_ITER_NATIVE, &idx, copy_attr, &dst) >= 0;
  if (dst >= 0) ok = H5Fclose(dst) >= 0 && ok;
  if (src >= 0) H5Fclose(src);
  std::error_code ec;
  if (!ok) {
    std::filesystem::remove(tmp, ec);
    throw FileError(impl_->path, "HDF5: could not copy the finished log to " + tmp);
  }
  std::filesystem::rename(tmp, path_);
  std::filesystem::remove(impl_->path, ec);
}

GateLogWriter::~GateLogWriter() {
  try {
    finish(false);
  } catch (...) {
  }
}

}  // namespace spkv
