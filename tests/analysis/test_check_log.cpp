// `spkv check`: real logs of `spkv run` (gated, and dense with attention statistics) pass, and each kind of
// damage, written into a copy with HDF5's C API, is reported as the first violation with its dataset and
// index. The bundled model writes the logs; the test skips without it.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>

#include "analysis/check_log.h"
#include "core/base/errors.h"
#include "core/gatelog/reader.h"
#include "tests/test_util.h"

namespace spkv::analysis {
namespace {
namespace fs = std::filesystem;

const std::string kModel = std::string(SPKV_SOURCE_DIR) + "/data/models/spkv-default";

// Writes one element (flat index) of a dataset, in the memory type `type`.
void set_element(const std::string& path, const char* name, hsize_t index, hid_t type, const void* v) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0) << path;
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
  ASSERT_GE(d, 0) << name;
  hid_t fs = H5Dget_space(d);
  const int rank = H5Sget_simple_extent_ndims(fs);
  std::vector<hsize_t> dims(size_t(std::max(rank, 1)), 1), coord(size_t(std::max(rank, 1)), 0);
  if (rank > 0) {
    H5Sget_simple_extent_dims(fs, dims.data(), nullptr);
    for (int i = rank - 1; i >= 0; --i) coord[size_t(i)] = index % dims[size_t(i)], index /= dims[size_t(i)];
    H5Sselect_elements(fs, H5S_SELECT_SET, 1, coord.data());
  }
  hsize_t one = 1;
  hid_t ms = H5Screate_simple(1, &one, nullptr);
  EXPECT_GE(H5Dwrite(d, type, rank > 0 ? ms : H5S_ALL, rank > 0 ? fs : H5S_ALL, H5P_DEFAULT, v), 0) << name;
  H5Sclose(ms), H5Sclose(fs), H5Dclose(d), H5Fclose(f);
}

std::string violation(const std::string& path) {
  try {
    check_gate_log(path);
  } catch (const LogViolation& e) {
    return e.what();
  } catch (const FileError& e) {  // the reader's own checks on open: not what these tests damage
    return std::string("not a LogViolation: ") + e.what();
  }
  return "";
}

class CheckLog : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(kModel + "/model.safetensors")) return;
    dir_ = new test::TempDir;
    const std::string in = test::quote(kModel + "/heldout/tasks.jsonl");
    ok_ = test::run_spkv("run -m " + test::quote(kModel) + " --max-docs 3 --out " + (*dir_ / "gated.h5") + " " + in).exit_code == 0 &&
          test::run_spkv("run -m " + test::quote(kModel) + " --max-docs 2 --dense --attention-stats --out " + (*dir_ / "dense.h5") +
                         " " + in).exit_code == 0;
  }
  static void TearDownTestSuite() { delete dir_; }
  void SetUp() override {
    if (!dir_) GTEST_SKIP() << kModel << " is absent";
    ASSERT_TRUE(ok_) << "spkv run failed";
  }
  // What the damage needs to know of the log, read before it is opened for writing.
  struct Facts {
    int64_t LH = 0;
    std::vector<int64_t> token_offsets, kept;
    std::vector<float> u, received;  // (N, L, Hkv); received is empty without /attention
  };
  // A copy of a log, damaged by `damage`; returns the validator's message.
  std::string damaged(const std::string& log, const std::function<void(const std::string&, const Facts&)>& damage) {
    const std::string copy = tmp_ / "copy.h5";
    fs::copy_file(*dir_ / log, copy, fs::copy_options::overwrite_existing);
    Facts f;
    {
      GateLogReader r(copy);
      const int64_t N = r.info().n_tokens;
      f.LH = r.info().n_layers * r.info().n_kv_heads, f.token_offsets = r.token_offsets(), f.kept = r.kept();
      f.u = r.u(0, N);
      if (r.exists("attention/received")) f.received = r.received(0, N);
    }
    damage(copy, f);
    return violation(copy);
  }
  static test::TempDir* dir_;
  static bool ok_;
  test::TempDir tmp_;
};
test::TempDir* CheckLog::dir_ = nullptr;
bool CheckLog::ok_ = false;

TEST_F(CheckLog, RunLogsPassThroughTheCommandLine) {
  for (const char* log : {"gated.h5", "dense.h5"}) {
    const auto r = test::run_spkv("check " + (*dir_ / log));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find(std::string(log) + ": ok: "), std::string::npos) << r.out;
  }
  EXPECT_NE(test::run_spkv("check " + (*dir_ / "dense.h5")).out.find("attention received sums"), std::string::npos);
  const auto rep = check_gate_log(*dir_ / "gated.h5");
  EXPECT_EQ(rep.documents, 3);
  EXPECT_TRUE(rep.complete);
}

TEST_F(CheckLog, AFlippedDecisionIsNamedWithItsTokenLayerAndHead) {
  const std::string msg = damaged("gated.h5", [](const std::string& path, const Facts& f) {
    for (size_t i = size_t(5 * f.LH); i < f.u.size(); ++i)  // a clear keep, well past keep_first
      if (f.u[i] > 0.7f) {
        const uint8_t zero = 0;
        set_element(path, "gates/z", i, H5T_NATIVE_UINT8, &zero);
        return;
      }
    FAIL() << "no gate with u > 0.7";
  });
  EXPECT_NE(msg.find("gates/z["), std::string::npos) << msg;
  EXPECT_NE(msg.find("is 0 but u = "), std::string::npos) << msg;
}

TEST_F(CheckLog, EachSummaryAndCountIsRecomputed) {
  struct Case {
    const char* dataset;
    hsize_t index;
    int64_t value;
    const char* expect;
  };
  // Entries are chosen where the right value is never the damaged one (cache_entries >= 1, positions >= 0).
  for (const Case& c : {Case{"tokens/cache_entries", 40, -5, "tokens/cache_entries[40] is -5, expected "},
                        Case{"tokens/position", 7, 3, "tokens/position[7] is 3, expected 7"},
                        Case{"documents/eligible", 1, 100000, "documents/eligible[0, layer 0, kv head 1] is 100000, expected "},
                        Case{"summary/kept", 2, 999999, "summary kept/eligible at layer 0, kv head 2 are 999999/"},
                        Case{"summary/n_tokens", 0, 7, "summary/n_documents and n_tokens are 3 and 7"},
                        Case{"tokens/ids", 9, 1 << 20, "tokens/ids[9] is 1048576, outside the vocabulary"}}) {
    const std::string msg = damaged("gated.h5", [&](const std::string& path, const Facts&) {
      set_element(path, c.dataset, c.index, H5T_NATIVE_INT64, &c.value);
    });
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.dataset << ": " << msg;
  }
  // documents/kept one lower than its z count (still within [0, eligible], which the reader checks on open)
  const std::string kept = damaged("gated.h5", [](const std::string& path, const Facts& f) {
    const int64_t k = f.kept[5] - 1;
    ASSERT_GE(k, 0);
    set_element(path, "documents/kept", 5, H5T_NATIVE_INT64, &k);
  });
  EXPECT_NE(kept.find("documents/kept[0, layer 1, kv head 1] is "), std::string::npos) << kept;
  const std::string dens = damaged("gated.h5", [](const std::string& path, const Facts&) {
    const double v = 0.123;
    set_element(path, "summary/density/density", 3, H5T_NATIVE_DOUBLE, &v);
  });
  EXPECT_NE(dens.find("summary/density/density[0, 3] is 0.123, expected kept/eligible"), std::string::npos) << dens;
}

TEST_F(CheckLog, NllTextAndAttentionAreChecked) {
  const std::string bos = damaged("gated.h5", [](const std::string& path, const Facts& f) {
    const float v = 1.5f;
    set_element(path, "tokens/nll", hsize_t(f.token_offsets[1]), H5T_NATIVE_FLOAT, &v);  // BOS of document 1
  });
  EXPECT_NE(bos.find("is 1.5, expected NaN (position 0)"), std::string::npos) << bos;
  const std::string utf8 = damaged("gated.h5", [](const std::string& path, const Facts&) {
    const uint8_t bad = 0xff;
    set_element(path, "tokens/text_bytes", 20, H5T_NATIVE_UINT8, &bad);
  });
  EXPECT_NE(utf8.find("document 0 ("), std::string::npos) << utf8;
  EXPECT_NE(utf8.find("do not concatenate to valid UTF-8"), std::string::npos) << utf8;
  const std::string mass = damaged("dense.h5", [](const std::string& path, const Facts& f) {
    const float v = f.received[size_t(10 * f.LH)] + 3.0f;  // received_last stays <= received
    set_element(path, "attention/received", hsize_t(10 * f.LH), H5T_NATIVE_FLOAT, &v);
  });
  EXPECT_NE(mass.find("attention of document 0 ("), std::string::npos) << mass;
  EXPECT_NE(mass.find("at layer 0, kv head 0: received sums to "), std::string::npos) << mass;
}

TEST_F(CheckLog, TheCommandLineExitsNonZeroWithOneLine) {
  const std::string copy = tmp_ / "bad.h5";
  fs::copy_file(*dir_ / "gated.h5", copy);
  const int64_t v = 0;
  set_element(copy, "tokens/cache_entries", 100, H5T_NATIVE_INT64, &v);
  const auto r = test::run_spkv("check " + test::quote(copy));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find("spkv: error: " + copy + ": tokens/cache_entries[100] is 0, expected "), std::string::npos) << r.err;
}

}  // namespace
}  // namespace spkv::analysis
