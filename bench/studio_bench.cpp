// spkv-studio responsiveness on a large generated gate log (issue targets: first paint < 2 s, a zoom or pan
// step repaints in < 50 ms, memory < 1 GB). Usage:
//   spkv-studio-bench [--log PATH] [--tokens N] [--layers L] [--heads H] [--json OUT]
// Generates the log when PATH does not exist (in a child process, so its memory is not counted): document 0
// holds half the tokens, 16 more share the rest. Then, in one offscreen window, it times opening to the first
// painted heatmap, the token view and tau slider becoming ready, zoom and pan repaints of the token view over
// document 0 (against the same repaints without the level-of-detail pyramid, the baseline), and a tau move.
#include <QApplication>
#include <QElapsedTimer>
#include <QFile>
#include <QProcess>
#include <algorithm>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "core/gatelog/writer.h"
#include "gui/app/MainWindow.h"
#include "gui/widgets/HeatmapView.h"
#include "gui/widgets/TokenView.h"

using namespace spkv;
using namespace spkv::gui;

namespace {
uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
uint16_t to_half(float f) {  // positive normal values
  uint32_t b;
  std::memcpy(&b, &f, 4);
  const uint32_t exp = ((b >> 23) & 0xff) - 127 + 15, man = b & 0x7fffff;
  return uint16_t(((exp << 10) | (man >> 13)) + ((man >> 12) & 1));
}

// Heads with densities from 0.05 to 0.9 (a smooth pattern over layers and heads), u from a logistic around
// each head's threshold, newlines kept more often: structure to look at, not a model's.
void generate(const std::string& path, int64_t n_tokens, int64_t L, int64_t H) {
  const int64_t LH = L * H, W = 256;
  GateLogHeader h;
  h.n_layers = L, h.n_kv_heads = H, h.window = W, h.keep_first = 4, h.tau = 0.5, h.gating_mode = "hard";
  h.model_path = "generated", h.checkpoint_sha256 = "generated", h.tool_version = "spkv-studio-bench";
  h.model_config_json = R"({"model_type": "llama", "head_dim": 128})", h.inputs_json = R"(["generated"])";
  std::vector<double> bias(static_cast<size_t>(LH));
  for (int64_t i = 0; i < LH; ++i) {
    const double p = 0.05 + 0.85 * (0.5 + 0.5 * std::sin(0.7 * double(i / H) + 1.3 * double(i % H)));
    bias[size_t(i)] = std::log(p / (1 - p));
  }
  static const char* words[] = {" the", " of", " cache", " key", " value", " gate", ",", ".", "\n", " attention", " head", " token"};
  std::vector<int64_t> lengths{n_tokens / 2};
  for (int k = 0; k < 16; ++k) lengths.push_back((n_tokens - n_tokens / 2) / 16 + (k < (n_tokens - n_tokens / 2) % 16));
  GateLogWriter w(path + ".tmp.h5", h, false, 30);
  for (size_t d = 0; d < lengths.size(); ++d) {
    const int64_t T = lengths[d];
    LoggedDocument doc;
    doc.id = "generated#" + std::to_string(d);
    doc.kept.assign(size_t(LH), 0), doc.eligible.assign(size_t(LH), 0);
    doc.u.resize(size_t(T * LH)), doc.z.resize(size_t(T * LH));
    for (int64_t t = 0; t < T; ++t) {
      const uint64_t r = mix(uint64_t(d) << 40 ^ uint64_t(t));
      const int word = t == 0 ? -1 : int(r % 12);
      doc.tokens.push_back(word + 1), doc.text.push_back(word < 0 ? "" : words[word]), doc.nll.push_back(t ? 2.0f : NAN);
      for (int64_t i = 0; i < LH; ++i) {
        const double noise = double(mix(r ^ uint64_t(i) * 0x51ed27ull) >> 11) / double(1ull << 53);
        const double logit = bias[size_t(i)] + std::log(noise / (1 - noise + 1e-12) + 1e-12) + (word == 8 ? 2.0 : 0.0);
        const float u = float(std::clamp(1 / (1 + std::exp(-logit)), 0.001, 0.999));
        const bool z = t < h.keep_first || u >= 0.5f;
        doc.u[size_t(t * LH + i)] = to_half(u), doc.z[size_t(t * LH + i)] = z;
        if (t >= h.keep_first && t < T - W) doc.eligible[size_t(i)] += 1, doc.kept[size_t(i)] += z;
      }
    }
    int64_t stored = 0;
    for (int64_t t = 0; t < T; ++t) {
      if (t >= W)
        for (int64_t i = 0; i < LH; ++i) stored += doc.z[size_t((t - W) * LH + i)];
      doc.cache_entries.push_back(int32_t(std::min(t + 1, W) * LH + stored));
    }
    w.add(std::move(doc));
    std::fprintf(stderr, "generated document %zu of %zu (%lld tokens)\n", d + 1, lengths.size(), (long long)T);
  }
  w.close();
  std::rename((path + ".tmp.h5").c_str(), path.c_str());
}

double memory_mib(const char* field) {  // VmRSS or VmHWM from /proc/self/status
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(field, 0) == 0) return std::stod(line.substr(std::strlen(field) + 1)) / 1024.0;
  return NAN;
}

struct Steps {
  std::vector<double> ms;
  double median() const { auto v = ms; std::sort(v.begin(), v.end()); return v[v.size() / 2]; }
  double p95() const { auto v = ms; std::sort(v.begin(), v.end()); return v[std::min(v.size() - 1, size_t(0.95 * double(v.size())))]; }
  double max() const { return *std::max_element(ms.begin(), ms.end()); }
};

// The same zoom-and-pan sequence every time: zoom in about moving anchors down to 64 px per token, pan both
// ways, zoom back out to the whole document.
Steps zoom_pan(TokenView* tv) {
  Steps s;
  auto& a = tv->axis();
  a.fit();
  auto step = [&](auto change) {
    change();
    QElapsedTimer t;
    t.start();
    tv->repaint();  // synchronous paint of the visible range
    s.ms.push_back(double(t.nsecsElapsed()) / 1e6);
  };
  const double w = a.width();
  for (int k = 0; k < 30; ++k) step([&] { a.zoom(1.6, w * (0.3 + 0.4 * ((k * 7) % 10) / 10.0)); });
  for (int k = 0; k < 20; ++k) step([&] { a.pan(k % 2 ? -w / 3 : w / 4); });
  for (int k = 0; k < 30; ++k) step([&] { a.zoom(1 / 1.6, w * 0.5); });
  for (int k = 0; k < 10; ++k) step([&] { a.pan(k % 2 ? -w / 3 : w / 4); });
  return s;
}
}  // namespace

int main(int argc, char** argv) {
  std::string log = "bench/studio_1M.h5", json;
  int64_t tokens = 1 << 20, layers = 16, heads = 8;
  bool generate_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--log") log = next();
    else if (a == "--tokens") tokens = std::stoll(next());
    else if (a == "--layers") layers = std::stoll(next());
    else if (a == "--heads") heads = std::stoll(next());
    else if (a == "--json") json = next();
    else if (a == "--generate") generate_only = true;
    else {
      std::fprintf(stderr, "spkv-studio-bench: unknown argument '%s'\n", a.c_str());
      return 2;
    }
  }
  if (generate_only) {
    generate(log, tokens, layers, heads);
    return 0;
  }
  if (!QFile::exists(QString::fromStdString(log))) {
    std::fprintf(stderr, "generating %s: %lld tokens x %lld layers x %lld KV heads\n", log.c_str(), (long long)tokens,
                 (long long)layers, (long long)heads);
    const int rc = QProcess::execute(argv[0], {"--generate", "--log", QString::fromStdString(log), "--tokens", QString::number(tokens),
                                               "--layers", QString::number(layers), "--heads", QString::number(heads)});
    if (rc != 0) return 1;
  }
  if (!std::getenv("QT_QPA_PLATFORM")) setenv("QT_QPA_PLATFORM", "offscreen", 1);
  QApplication app(argc, argv);
  const double rss0 = memory_mib("VmRSS");
  MainWindow win;
  win.resize(1600, 1000);
  win.show();
  QApplication::processEvents();

  QElapsedTimer clock;
  clock.start();
  win.openLog(QString::fromStdString(log));
  while (!win.corpus() && win.lastError().isEmpty()) QApplication::processEvents(QEventLoop::AllEvents, 5);
  if (!win.corpus()) {
    std::fprintf(stderr, "spkv-studio-bench: %s\n", win.lastError().toUtf8().constData());
    return 1;
  }
  win.heatmap()->repaint();
  const double first_paint = double(clock.nsecsElapsed()) / 1e9;
  while (!win.document()) QApplication::processEvents(QEventLoop::AllEvents, 5);
  win.tokenView()->repaint();
  const double tokens_ready = double(clock.nsecsElapsed()) / 1e9;
  win.jobs().waitIdle(600000);
  const double all_ready = double(clock.nsecsElapsed()) / 1e9;
  const int64_t T = win.document()->T;

  const Steps lod = zoom_pan(win.tokenView());
  // Baseline: the same repaints reading raw tokens (a pyramid with no levels).
  win.tokenView()->setLod(std::make_shared<Lod>(Lod{KeptRule{}, {}}));
  Steps raw;
  {
    auto& a = win.tokenView()->axis();
    a.fit();
    for (int k = 0; k < 3; ++k) {
      QElapsedTimer t;
      t.start();
      win.tokenView()->repaint();
      raw.ms.push_back(double(t.nsecsElapsed()) / 1e6);
      a.zoom(1.6, a.width() / 2);
    }
  }
  // A tau move: the corpus heatmap at once (histograms), then documents, pyramid and plots in the background.
  clock.restart();
  win.setTau(0.6);
  win.heatmap()->repaint();
  const double tau_heatmap = double(clock.nsecsElapsed()) / 1e6;
  win.jobs().waitIdle(600000);
  const double tau_all = double(clock.nsecsElapsed()) / 1e9;
  const double peak = memory_mib("VmHWM");

  const auto& info = win.corpus()->info;
  std::printf("spkv-studio-bench: %s, %lld tokens x %lld layers x %lld KV heads, %lld documents (document 0: %lld tokens)\n",
              log.c_str(), (long long)info.n_tokens, (long long)info.n_layers, (long long)info.n_kv_heads,
              (long long)info.n_documents, (long long)T);
  std::printf("| measure | value | target | met |\n|---|---|---|---|\n");
  std::printf("| open to first painted heatmap | %.3f s | < 2 s | %s |\n", first_paint, first_paint < 2 ? "yes" : "no");
  std::printf("| token view of document 0 painted (rows read, pyramid built) | %.2f s | | |\n", tokens_ready);
  std::printf("| every open job done (u histograms: tau slider enabled) | %.2f s | | |\n", all_ready);
  std::printf("| zoom/pan repaint, median of %zu steps | %.2f ms | < 50 ms | %s |\n", lod.ms.size(), lod.median(), lod.median() < 50 ? "yes" : "no");
  std::printf("| zoom/pan repaint, 95th percentile / max | %.2f / %.2f ms | < 50 ms | %s |\n", lod.p95(), lod.max(), lod.max() < 50 ? "yes" : "no");
  std::printf("| baseline: repaint without the pyramid, median of %zu | %.1f ms (%.0fx slower) | | |\n", raw.ms.size(), raw.median(), raw.median() / lod.median());
  std::printf("| tau move: corpus heatmap repainted | %.2f ms | | |\n", tau_heatmap);
  std::printf("| tau move: documents, pyramid and plots updated | %.2f s | | |\n", tau_all);
  std::printf("| peak resident memory (VmHWM) | %.0f MiB (%.0f MiB before the window) | < 1024 MiB | %s |\n", peak, rss0, peak < 1024 ? "yes" : "no");
  if (!json.empty()) {
    std::ofstream out(json);
    out << "{\"tokens\": " << info.n_tokens << ", \"layers\": " << info.n_layers << ", \"kv_heads\": " << info.n_kv_heads
        << ", \"document0_tokens\": " << T << ", \"first_paint_s\": " << first_paint << ", \"tokens_ready_s\": " << tokens_ready
        << ", \"all_ready_s\": " << all_ready << ", \"step_median_ms\": " << lod.median() << ", \"step_p95_ms\": " << lod.p95()
        << ", \"step_max_ms\": " << lod.max() << ", \"raw_step_median_ms\": " << raw.median() << ", \"tau_heatmap_ms\": " << tau_heatmap
        << ", \"tau_all_s\": " << tau_all << ", \"peak_mib\": " << peak << "}\n";
  }
  return 0;
}
