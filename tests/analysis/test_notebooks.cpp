// The notebooks' loader (notebooks/spkv_log.py) against the C++ reader and analysis on a log of the default
// model made here, and every notebook executed headless (nbconvert, /usr/bin/python3) on that log and a
// layout evaluation: the statistics must agree and the notebook must print what the C++ side computed.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>

#include "analysis/report.h"
#include "core/gatelog/reader.h"
#include "core/text/documents.h"
#include "tests/test_util.h"

namespace spkv::analysis {
namespace {

const std::string kSource = SPKV_SOURCE_DIR;
const std::string kModel = kSource + "/data/models/spkv-default";

int shell(const std::string& cmd) {
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Text of all cell outputs of an executed notebook.
std::string outputs(const nlohmann::json& nb) {
  std::string s;
  for (const auto& c : nb["cells"])
    for (const auto& o : c.value("outputs", nlohmann::json::array()))
      if (o.contains("text")) s += o["text"].is_array() ? [&] { std::string t; for (auto& x : o["text"]) t += x; return t; }()
                                                        : o["text"].get<std::string>();
  return s;
}

TEST(Notebooks, LoaderAgreesWithTheCppReaderAndEveryNotebookRuns) {
  if (shell("/usr/bin/python3 -c 'import h5py, matplotlib, nbconvert' 2>/dev/null") != 0)
    GTEST_SKIP() << "/usr/bin/python3 lacks h5py, matplotlib or nbconvert (scripts/setup installs them)";
  test::TempDir tmp;
  // Six held-out documents, one of them longer than the context (it is split into pieces).
  auto docs = read_documents(kModel + "/heldout/text/jargon.txt", "<|endoftext|>");
  std::string corpus;
  for (size_t d = 0; d < 6; ++d) corpus += docs[d].text.substr(0, d == 2 ? 6000 : 900 + 250 * d) + "\n<|endoftext|>\n";
  test::write_file(tmp / "corpus.txt", corpus);
  const std::string sep = " --separator '<|endoftext|>' ";
  for (const std::string& args :
       {"run -m " + kModel + " --out " + tmp / "log.h5 " + tmp / "corpus.txt" + sep,
        "layout derive " + tmp / "log.h5 --budget 4 --random 1 --out " + tmp / "layouts",
        "layout eval -m " + kModel + " --corpus " + tmp / "corpus.txt" + sep + tmp / "layouts/guided.json " +
            tmp / "layouts/interleaved-0.json --json " + tmp / "eval.json"}) {
    const auto r = test::run_spkv(args);
    ASSERT_EQ(r.exit_code, 0) << args << "\n" << r.err;
  }

  test::expect_valid_log(tmp / "log.h5");
  // The loader's statistics against analyze_logs and the reader.
  ASSERT_EQ(shell("/usr/bin/python3 " + test::quote(kSource + "/notebooks/spkv_log.py") + " " + tmp / "log.h5 > " + tmp / "py.json"), 0);
  const auto py = nlohmann::json::parse(test::read_file(tmp / "py.json"));
  const Report r = analyze_logs({tmp / "log.h5"});
  ASSERT_GT(r.documents, 6) << "the long document must have been split";
  EXPECT_EQ(py["documents"], r.documents);
  for (int64_t il = 0; il < r.n_layers; ++il)
    for (int64_t h = 0; h < r.n_kv_heads; ++h) {
      const double want = r.per_head[il * r.n_kv_heads + h].mean;
      EXPECT_NEAR(py["density_per_head"][il][h].get<double>(), want, 1e-12) << il << "," << h;
    }
  EXPECT_NEAR(py["overall_density"].get<double>(), r.overall.mean, 1e-12);
  ASSERT_EQ(py["compression"].size(), r.compression.size());
  for (size_t d = 0; d < r.compression.size(); ++d) {
    EXPECT_NEAR(py["compression"][d].get<double>(), r.compression[d].compression, 1e-12) << d;
    EXPECT_EQ(py["ids"][d], r.compression[d].id);
  }
  EXPECT_NEAR(py["fit"][0].get<double>(), r.compression_fit.slope, 1e-12);
  EXPECT_NEAR(py["fit"][2].get<double>(), r.compression_fit.r2, 1e-9);
  ASSERT_EQ(py["tau_overall"].size(), r.tau_overall.size());
  for (size_t k = 0; k < r.tau_overall.size(); ++k) {
    EXPECT_NEAR(py["tau_overall"][k].get<double>(), r.tau_overall[k], 1e-12) << k;
    for (int64_t i = 0; i < r.n_layers * r.n_kv_heads; ++i)
      EXPECT_NEAR(py["tau_per_head"][k][i / r.n_kv_heads][i % r.n_kv_heads].get<double>(), r.tau_density[k][i], 1e-12);
  }
  GateLogReader log(tmp / "log.h5");
  std::string text0;
  for (const auto& t : log.token_text(0, log.token_offsets()[1])) text0 += t;
  EXPECT_EQ(py["text0"], text0);
  EXPECT_EQ(text0.substr(0, 200), docs[0].text.substr(0, 200));

  // Every notebook, executed on this log and evaluation.
  int ran = 0;
  for (const auto& e : std::filesystem::directory_iterator(kSource + "/notebooks")) {
    if (e.path().extension() != ".ipynb") continue;
    const std::string cmd = "cd " + test::quote(tmp.path.string()) + " && PYDEVD_DISABLE_FILE_VALIDATION=1 SPKV_LOG=" + tmp / "log.h5" +
                            " SPKV_LAYOUT_EVAL=" + tmp / "eval.json" +
                            " /usr/bin/python3 -m nbconvert --to notebook --execute --ExecutePreprocessor.timeout=300 "
                            "--output-dir " + tmp / "out " + test::quote(e.path().string()) + " > " + tmp / "nb.log 2>&1";
    ASSERT_EQ(shell(cmd), 0) << e.path() << "\n" << test::read_file(tmp / "nb.log");
    const auto nb = nlohmann::json::parse(test::read_file(tmp / ("out/" + e.path().filename().string())));
    const std::string out = outputs(nb);
    if (e.path().filename() == "gate_log_tour.ipynb") {
      char want[64];
      std::snprintf(want, sizeof want, "overall density %.6f", r.overall.mean);
      EXPECT_NE(out.find(want), std::string::npos) << out;
      EXPECT_NE(out.find("interleaved-0"), std::string::npos) << "the layout table is missing:\n" << out;
    }
    ++ran;
  }
  EXPECT_GE(ran, 1);
}

}  // namespace
}  // namespace spkv::analysis
