// Damaged gate logs: every reader check names the dataset or attribute that is wrong, and random byte
// flips give an error or a readable log, never a crash. The logs are real (GateLogWriter), then damaged
// with HDF5's C API or by flipping bytes.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <functional>
#include <random>

#include "core/base/errors.h"
#include "core/gatelog/reader.h"
#include "core/gatelog/writer.h"
#include "tests/test_util.h"

namespace spkv::analysis {
namespace {

constexpr int64_t L = 2, Hkv = 3, W = 4;

void write_log(const std::string& path) {
  GateLogHeader h;
  h.n_layers = L, h.n_kv_heads = Hkv, h.window = W, h.tau = 0.5, h.gating_mode = "hard", h.checkpoint_sha256 = "x";
  GateLogWriter w(path, h, false, 0);
  for (int64_t d = 0; d < 3; ++d) {
    const int64_t T = 9 + 5 * d;
    LoggedDocument doc;
    doc.id = "doc" + std::to_string(d);
    doc.kept.assign(L * Hkv, 0), doc.eligible.assign(L * Hkv, T - W);
    for (int64_t t = 0; t < T; ++t) {
      doc.tokens.push_back(int32_t(3 + t % 7)), doc.text.push_back(std::string(1, char('a' + t % 26)));
      doc.nll.push_back(1.0f + 0.01f * float(t));
      for (int64_t i = 0; i < L * Hkv; ++i) {
        const bool keep = (i + t) % 3 == 0;
        doc.z.push_back(keep), doc.u.push_back(keep ? 0x3b33 : 0x2e66);
        if (keep && t < T - W) ++doc.kept[size_t(i)];
      }
      doc.cache_entries.push_back(0);
    }
    w.add(std::move(doc));
  }
  w.close();
}

void set_attr_i64(hid_t f, const char* name, int64_t v) {
  hid_t a = H5Aopen(f, name, H5P_DEFAULT);
  ASSERT_GE(a, 0) << name;
  H5Awrite(a, H5T_NATIVE_INT64, &v);
  H5Aclose(a);
}
void set_element_i64(hid_t f, const char* name, hsize_t index, int64_t v) {  // flat index
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
  ASSERT_GE(d, 0) << name;
  hid_t fs = H5Dget_space(d);
  const int rank = H5Sget_simple_extent_ndims(fs);
  std::vector<hsize_t> dims(static_cast<size_t>(rank)), coord(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(fs, dims.data(), nullptr);
  for (int i = rank - 1; i >= 0; --i) coord[size_t(i)] = index % dims[size_t(i)], index /= dims[size_t(i)];
  H5Sselect_elements(fs, H5S_SELECT_SET, 1, coord.data());
  hsize_t one = 1;
  hid_t ms = H5Screate_simple(1, &one, nullptr);
  H5Dwrite(d, H5T_NATIVE_INT64, ms, fs, H5P_DEFAULT, &v);
  H5Sclose(ms), H5Sclose(fs), H5Dclose(d);
}
void shrink_rows(hid_t f, const char* name, hsize_t rows) {  // what a full disk left behind
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
  ASSERT_GE(d, 0) << name;
  hid_t fs = H5Dget_space(d);
  std::vector<hsize_t> dims(static_cast<size_t>(H5Sget_simple_extent_ndims(fs)));
  H5Sget_simple_extent_dims(fs, dims.data(), nullptr);
  dims[0] = rows;
  ASSERT_GE(H5Dset_extent(d, dims.data()), 0) << name;
  H5Sclose(fs), H5Dclose(d);
}

// Opens and reads every row; returns "" or the error.
std::string read_all(const std::string& path) {
  try {
    GateLogReader r(path);
    const int64_t n = r.info().n_tokens;
    r.u(0, n), r.u_bits(0, n), r.z(0, n), r.token_ids(0, n), r.nll(0, n), r.cache_entries(0, n), r.token_text(0, n);
    return "";
  } catch (const Error& e) {
    return e.what();
  }
}

TEST(LogDamage, EveryReaderCheckNamesTheDataset) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  struct Case {
    const char* name;
    std::function<void(hid_t)> damage;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"n_layers too small", [](hid_t f) { set_attr_i64(f, "n_layers", 1); }, "gates/u has shape (42, 2, 3), expected (42, 1, 3)"},
      {"n_layers absurd", [](hid_t f) { set_attr_i64(f, "n_kv_heads", int64_t(1) << 40); }, "root attribute 'n_kv_heads'"},
      {"window 2^62", [](hid_t f) { set_attr_i64(f, "window", int64_t(1) << 62); }, "root attribute 'window'"},
      {"id offset 1e9", [](hid_t f) { set_element_i64(f, "documents/id_offsets", 2, 1000000000); }, "documents/id_offsets"},
      {"negative kept", [](hid_t f) { set_element_i64(f, "documents/kept", 4, -3); }, "documents/kept[0] = -3 is outside"},
      {"kept > eligible", [](hid_t f) { set_element_i64(f, "documents/kept", 7, 1000); }, "documents/kept[1] = 1000 is outside [0, eligible = 10]"},
      {"token offsets decrease", [](hid_t f) { set_element_i64(f, "documents/token_offsets", 1, 30); }, "documents/token_offsets decreases at entry 2"},
      {"token offsets past the tokens", [](hid_t f) { set_element_i64(f, "documents/token_offsets", 3, 40); }, "ends at 40 but tokens/ids holds 42"},
      {"z cut short (full disk)", [](hid_t f) { shrink_rows(f, "gates/z", 20); }, "gates/z has shape (20, 2, 3), expected (42, 2, 3)"},
      {"text offsets decrease", [](hid_t f) { set_element_i64(f, "tokens/text_offsets", 5, 1); }, "tokens/text_offsets decreases at entry 5"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    test::TempDir tmp;
    write_log(tmp / "a.h5");
    ASSERT_EQ(read_all(tmp / "a.h5"), "");
    hid_t f = H5Fopen((tmp / "a.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    c.damage(f);
    H5Fclose(f);
    const std::string err = read_all(tmp / "a.h5");
    EXPECT_NE(err.find(c.expect), std::string::npos) << err;
    EXPECT_NE(err.find("a.h5"), std::string::npos) << err;
  }
}

TEST(LogDamage, RandomByteFlipsGiveAnErrorOrAReadableLog) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  test::TempDir tmp;
  write_log(tmp / "a.h5");
  const std::string good = test::read_file(tmp / "a.h5");
  std::mt19937_64 rng(5);
  int errors = 0;
  for (int k = 0; k < 120; ++k) {
    std::string bad = good;
    for (int f = 0; f < 4; ++f) bad[rng() % bad.size()] ^= char(1 + rng() % 255);
    test::write_file(tmp / "b.h5", bad);
    errors += !read_all(tmp / "b.h5").empty();  // a crash here fails the whole test binary
  }
  std::printf("120 damaged copies: %d refused with an error, %d read\n", errors, 120 - errors);
}

}  // namespace
}  // namespace spkv::analysis
