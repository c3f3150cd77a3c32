// analyze_logs: summaries from /documents, the tau sweep by streaming /gates/u one document at a time.
#include "analysis/report.h"

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "core/base/errors.h"
#include "core/base/json_text.h"
#include "core/gatelog/reader.h"
#include "core/gatelog/rule.h"

namespace spkv::analysis {

LinearFit fit_line(const std::vector<double>& x, const std::vector<double>& y) {
  LinearFit f;
  f.n = int64_t(x.size());
  if (x.size() != y.size() || x.size() < 2) return f;
  double mx = 0, my = 0;
  for (size_t i = 0; i < x.size(); ++i) mx += x[i], my += y[i];
  mx /= double(x.size()), my /= double(y.size());
  double sxx = 0, sxy = 0, syy = 0;
  for (size_t i = 0; i < x.size(); ++i)
    sxx += (x[i] - mx) * (x[i] - mx), sxy += (x[i] - mx) * (y[i] - my), syy += (y[i] - my) * (y[i] - my);
  if (sxx == 0) return f;
  f.slope = sxy / sxx, f.intercept = my - f.slope * mx;
  f.r2 = syy > 0 ? sxy * sxy / (sxx * syy) : 1.0;
  return f;
}

namespace {
// The model_type of the log's model_config attribute; "" when it is not JSON or has none.
std::string model_type_of(const std::string& config_json) {
  const auto config = nlohmann::json::parse(config_json, nullptr, false);
  return config.is_object() && config.contains("model_type") && config["model_type"].is_string()
             ? config["model_type"].get<std::string>()
             : "";
}

// Pooled density of the selected (layer, head) cells with its spread across documents.
Summary density_summary(const std::vector<std::vector<int64_t>>& kept, const std::vector<std::vector<int64_t>>& elig,
                        const std::vector<size_t>& cells) {
  std::vector<double> xs, ws;
  for (size_t d = 0; d < kept.size(); ++d) {
    int64_t k = 0, e = 0;
    for (size_t c : cells) k += kept[d][c], e += elig[d][c];
    if (e > 0) xs.push_back(double(k) / double(e)), ws.push_back(double(e));
  }
  return summarize(xs, ws);
}
}  // namespace

Report summary_report(const LogInfo& in, const std::vector<int64_t>& off, const std::vector<std::string>& ids,
                      const std::vector<int64_t>& kept, const std::vector<int64_t>& eligible) {
  Report r;
  r.logs = {in.path};
  r.n_layers = in.n_layers, r.n_kv_heads = in.n_kv_heads, r.window = in.window, r.keep_first = in.keep_first;
  r.tau = in.tau, r.gating_mode = in.gating_mode, r.model_path = in.model_path, r.checkpoint_sha256 = in.checkpoint_sha256;
  r.model_type = model_type_of(in.model_config);
  const int64_t LH = in.n_layers * in.n_kv_heads, D = int64_t(ids.size());
  r.documents = D, r.tokens = off.back();
  r.kept.assign(LH, 0), r.eligible.assign(LH, 0);
  for (int64_t d = 0; d < D; ++d) {
    int64_t kept_total = 0;
    for (int64_t i = 0; i < LH; ++i) {
      r.kept[i] += kept[d * LH + i], r.eligible[i] += eligible[d * LH + i], kept_total += kept[d * LH + i];
    }
    const int64_t T = off[d + 1] - off[d];
    const double spkv = double(spkv_cache_entries(T, in.window, in.keep_first, LH, kept_total));
    r.compression.push_back({ids[d], T, double(LH * T) / spkv, spkv});
  }
  const double k = std::accumulate(r.kept.begin(), r.kept.end(), 0.0), e = std::accumulate(r.eligible.begin(), r.eligible.end(), 0.0);
  r.overall.n = D, r.overall.mean = e > 0 ? k / e : std::nan("");
  return r;
}

Report analyze_logs(const std::vector<std::string>& paths, std::vector<double> tau_grid) {
  if (paths.empty()) throw InputError("analyze: no gate logs given");
  if (tau_grid.empty())
    for (int i = 1; i <= 19; ++i) tau_grid.push_back(0.05 * i);
  Report r;
  r.tau_grid = tau_grid;
  std::vector<std::vector<int64_t>> doc_kept, doc_elig;  // (documents, L * Hkv)
  std::vector<std::vector<int64_t>> above;               // (grid, L * Hkv): eligible keys with u >= tau
  std::vector<double> lengths, ratios;
  std::unique_ptr<TokenRetentionCounter> tokens;
  std::unique_ptr<AttentionCounter> attention;  // dropped as soon as a log has no attention statistics
  for (const auto& path : paths) {
    GateLogReader log(path);
    const LogInfo& in = log.info();
    if (!in.attention_far) attention.reset();
    if (r.logs.empty()) {
      r.n_layers = in.n_layers, r.n_kv_heads = in.n_kv_heads, r.window = in.window, r.keep_first = in.keep_first;
      r.tau = in.tau, r.gating_mode = in.gating_mode;
      r.model_path = in.model_path, r.checkpoint_sha256 = in.checkpoint_sha256;
      r.model_type = model_type_of(in.model_config);
      above.assign(tau_grid.size(), std::vector<int64_t>(in.n_layers * in.n_kv_heads, 0));
      tokens = std::make_unique<TokenRetentionCounter>(in.n_layers * in.n_kv_heads);
      if (in.attention_far) attention = std::make_unique<AttentionCounter>(in.n_layers * in.n_kv_heads);
    } else if (in.n_layers != r.n_layers || in.n_kv_heads != r.n_kv_heads || in.window != r.window ||
               in.keep_first != r.keep_first) {
      throw FileError(path, fmt::format("cannot be merged with {}: layers x KV heads {}x{}, window {}, keep_first {} "
                                        "there but {}x{}, {}, {} here", r.logs[0], r.n_layers, r.n_kv_heads, r.window,
                                        r.keep_first, in.n_layers, in.n_kv_heads, in.window, in.keep_first));
    }
    r.logs.push_back(path);
    const int64_t LH = in.n_layers * in.n_kv_heads, W = in.window;
    const auto& off = log.token_offsets();
    std::vector<int64_t> log_kept(LH, 0), log_elig(LH, 0);
    for (int64_t d = 0; d < in.n_documents; ++d) {
      const int64_t T = off[d + 1] - off[d];
      doc_kept.emplace_back(log.kept().begin() + d * LH, log.kept().begin() + (d + 1) * LH);
      doc_elig.emplace_back(log.eligible().begin() + d * LH, log.eligible().begin() + (d + 1) * LH);
      int64_t kept_total = 0;
      for (int64_t i = 0; i < LH; ++i)
        kept_total += doc_kept.back()[i], log_kept[i] += doc_kept.back()[i], log_elig[i] += doc_elig.back()[i];
      const double spkv = double(spkv_cache_entries(T, W, in.keep_first, LH, kept_total));  // the dense cache holds T per head
      r.compression.push_back({log.document_ids()[d], T, double(LH * T) / spkv, spkv});
      lengths.push_back(double(T)), ratios.push_back(r.compression.back().compression);
      // Tau sweep over the eligible positions keep_first <= s < T - W.
      const EligibleKeys elig = eligible_keys(T, W, in.keep_first);
      const int64_t first = elig.begin, last = elig.end;
      if (elig.count() == 0) continue;
      const auto u = log.u(off[d] + first, off[d] + last);  // (last - first, L, Hkv)
      for (size_t k = 0; k < tau_grid.size(); ++k)
        for (size_t j = 0; j < u.size(); ++j) above[k][j % LH] += u[j] >= tau_grid[k];
      const auto z = log.z(off[d] + first, off[d] + last);
      tokens->add(first, log.token_ids(off[d] + first, off[d] + last), log.token_text(off[d] + first, off[d] + last), z);
      if (attention)
        attention->add(int64_t(doc_kept.size()), first, last - first, u, z, log.received(off[d] + first, off[d] + last),
                       log.received_last(off[d] + first, off[d] + last), log.received_far(off[d] + first, off[d] + last));
    }
    std::vector<double> density(LH, std::nan(""));
    for (int64_t i = 0; i < LH; ++i)
      if (log_elig[i] > 0) density[i] = double(log_kept[i]) / double(log_elig[i]);
    r.log_density.push_back(density);
    r.documents += in.n_documents, r.tokens += in.n_tokens;
  }
  const int64_t L = r.n_layers, Hkv = r.n_kv_heads, LH = L * Hkv;
  r.kept.assign(LH, 0), r.eligible.assign(LH, 0);
  for (size_t d = 0; d < doc_kept.size(); ++d)
    for (int64_t i = 0; i < LH; ++i) r.kept[i] += doc_kept[d][i], r.eligible[i] += doc_elig[d][i];
  std::vector<size_t> all;
  for (int64_t i = 0; i < LH; ++i) all.push_back(size_t(i));
  r.overall = density_summary(doc_kept, doc_elig, all);
  for (int64_t il = 0; il < L; ++il) {
    std::vector<size_t> layer;
    for (int64_t h = 0; h < Hkv; ++h) layer.push_back(size_t(il * Hkv + h));
    r.per_layer.push_back(density_summary(doc_kept, doc_elig, layer));
    for (size_t c : layer) r.per_head.push_back(density_summary(doc_kept, doc_elig, {c}));
  }
  r.compression_fit = fit_line(lengths, ratios);
  r.retention = tokens->finish();
  r.has_attention = attention != nullptr;
  if (attention) r.attention = attention->finish();
  for (size_t a = 0; a < r.log_density.size(); ++a)
    for (size_t b = a + 1; b < r.log_density.size(); ++b) {
      Stability st;
      st.a = a, st.b = b, st.spearman = spearman(r.log_density[a], r.log_density[b]);
      int64_t n = 0;
      for (int64_t i = 0; i < LH; ++i) {
        st.diff.push_back(r.log_density[b][i] - r.log_density[a][i]);
        if (std::isnan(st.diff.back())) continue;
        st.mean_abs_diff += std::abs(st.diff.back()), st.max_abs_diff = std::max(st.max_abs_diff, std::abs(st.diff.back())), ++n;
      }
      if (n > 0) st.mean_abs_diff /= double(n);
      r.stability.push_back(st);
    }
  for (size_t k = 0; k < tau_grid.size(); ++k) {
    std::vector<double> per(LH, std::nan(""));
    int64_t a = 0, e = 0;
    for (int64_t i = 0; i < LH; ++i) {
      if (r.eligible[i] > 0) per[i] = double(above[k][i]) / double(r.eligible[i]);
      a += above[k][i], e += r.eligible[i];
    }
    r.tau_density.push_back(per);
    r.tau_overall.push_back(e > 0 ? double(a) / double(e) : std::nan(""));
  }
  return r;
}

namespace {
nlohmann::json summary_json(const Summary& s) {
  return {{"density", s.mean}, {"std_across_documents", s.stddev}, {"ci95", {s.ci_low, s.ci_high}}, {"documents", s.n}};
}

nlohmann::json rate_or_null(int64_t kept, int64_t eligible) {
  return eligible > 0 ? nlohmann::json(double(kept) / double(eligible)) : nlohmann::json(nullptr);
}

// kept / eligible summed over the heads of layer il (all heads when il < 0).
std::pair<int64_t, int64_t> sum_heads(const std::vector<int64_t>& kept, const std::vector<int64_t>& elig, int64_t il,
                                      int64_t Hkv) {
  int64_t k = 0, e = 0;
  for (size_t i = 0; i < kept.size(); ++i)
    if (il < 0 || int64_t(i) / Hkv == il) k += kept[i], e += elig[i];
  return {k, e};
}

nlohmann::json strings_json(const std::vector<KeptString>& v) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& s : v) out.push_back({{"text", s.text}, {"kept", s.kept}, {"eligible", s.eligible}, {"rate", s.rate()}});
  return out;
}

nlohmann::json tokens_json(const TokenRetention& t, int64_t Hkv) {
  using nlohmann::json;
  json classes = json::array(), positions = json::array(), most = json::array(), least = json::array();
  for (int c = 0; c < kTokenClasses; ++c) {
    const auto [k, e] = sum_heads(t.class_kept[c], t.class_eligible[c], -1, Hkv);
    json per_head = json::array();
    for (int64_t i = 0; i < t.heads; ++i) per_head.push_back(rate_or_null(t.class_kept[c][i], t.class_eligible[c][i]));
    classes.push_back({{"class", token_class_name(TokenClass(c))}, {"kept", k}, {"eligible", e},
                       {"retention", rate_or_null(k, e)}, {"per_head", per_head}});
  }
  for (size_t b = 0; b < t.position_kept.size(); ++b) {
    const auto [k, e] = sum_heads(t.position_kept[b], t.position_eligible[b], -1, Hkv);
    positions.push_back({{"from", t.position_edges[b]}, {"to", t.position_edges[b + 1]}, {"kept", k}, {"eligible", e},
                         {"retention", rate_or_null(k, e)}});
  }
  for (int64_t i = 0; i < t.heads; ++i) most.push_back(strings_json(t.most_kept[i])), least.push_back(strings_json(t.least_kept[i]));
  return {{"classes", classes}, {"positions", positions},
          {"most_kept", {{"all_heads", strings_json(t.most_kept_all)}, {"per_head", most}}},
          {"least_kept", {{"all_heads", strings_json(t.least_kept_all)}, {"per_head", least}}}};
}

nlohmann::json nan_to_null(const std::vector<double>& v) {
  nlohmann::json out = nlohmann::json::array();
  for (double x : v) out.push_back(std::isnan(x) ? nlohmann::json(nullptr) : nlohmann::json(x));
  return out;
}

double ratio(double a, double b) { return b > 0 ? a / b : std::nan(""); }

// " layer 0 | layer 1 | ...\n" then the separator row with `lead` leading columns.
std::string layer_columns(int64_t L, int lead) {
  std::string s;
  for (int64_t il = 0; il < L; ++il) s += fmt::format(" layer {} |", il);
  s += "\n|";
  for (int64_t i = 0; i < L + lead; ++i) s += "---|";
  return s + "\n";
}
double sum(const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0); }

nlohmann::json attention_json(const AttentionReport& a) {
  using nlohmann::json;
  json policies = json::array(), bins = json::array();
  for (int p = 0; p < kNumPolicies; ++p) {
    std::vector<double> per_head;
    for (int64_t h = 0; h < a.heads; ++h) per_head.push_back(ratio(a.kept_mass[p][h], a.total_mass[h]));
    policies.push_back({{"policy", kPolicies[p]}, {"far_mass_share", ratio(sum(a.kept_mass[p]), sum(a.total_mass))},
                        {"per_head", nan_to_null(per_head)}});
  }
  for (const auto& b : a.reliability)
    bins.push_back({{"u_from", b.lo}, {"u_to", b.hi}, {"keys", b.keys}, {"mean_u", ratio(b.sum_u, double(b.keys))},
                    {"useful_rate", ratio(double(b.useful), double(b.keys))}, {"mean_far_mass", ratio(b.sum_far, double(b.keys))}});
  return {{"sinks", a.sinks}, {"kept_keys", a.kept_keys}, {"eligible_keys", a.eligible_keys}, {"policies", policies},
          {"calibration", {{"auroc_per_head", nan_to_null(a.auroc)}, {"reliability", bins}}}};
}
}  // namespace

std::string report_json(const Report& r) {
  using nlohmann::json;
  json per_head = json::array(), sweep = json::array(), docs = json::array();
  for (int64_t il = 0; il < r.n_layers; ++il) {
    json row = json::array();
    for (int64_t h = 0; h < r.n_kv_heads; ++h) row.push_back(summary_json(r.per_head[il * r.n_kv_heads + h]));
    per_head.push_back(row);
  }
  for (size_t k = 0; k < r.tau_grid.size(); ++k)
    sweep.push_back({{"tau", r.tau_grid[k]}, {"density", r.tau_overall[k]}, {"per_head", r.tau_density[k]}});
  for (auto& d : r.compression) docs.push_back({{"id", d.id}, {"tokens", d.tokens}, {"compression", d.compression}});
  json per_layer = json::array();
  for (auto& s : r.per_layer) per_layer.push_back(summary_json(s));
  json j = {{"logs", r.logs},
            {"settings", {{"layers", r.n_layers}, {"kv_heads", r.n_kv_heads}, {"window", r.window}, {"tau", r.tau},
                          {"keep_first", r.keep_first}, {"gating_mode", r.gating_mode}}},
            {"documents", r.documents},
            {"tokens", r.tokens},
            {"density", {{"overall", summary_json(r.overall)}, {"per_layer", per_layer}, {"per_head", per_head},
                         {"kept", r.kept}, {"eligible", r.eligible}}},
            {"compression", {{"per_document", docs},
                             {"fit", {{"slope", r.compression_fit.slope}, {"intercept", r.compression_fit.intercept},
                                      {"r2", r.compression_fit.r2}, {"documents", r.compression_fit.n}}}}},
            {"tau_sweep", sweep},
            {"retention", tokens_json(r.retention, r.n_kv_heads)}};
  json stab = json::array(), per_log = json::array();
  for (const auto& d : r.log_density) per_log.push_back(nan_to_null(d));
  for (const auto& st : r.stability)
    stab.push_back({{"a", r.logs[st.a]}, {"b", r.logs[st.b]}, {"mean_abs_diff", st.mean_abs_diff},
                    {"max_abs_diff", st.max_abs_diff}, {"spearman", std::isnan(st.spearman) ? json(nullptr) : json(st.spearman)},
                    {"diff_b_minus_a", nan_to_null(st.diff)}});
  j["density"]["per_log"] = per_log;
  if (r.has_attention) j["baselines"] = attention_json(r.attention);
  j["stability"] = stab;
  return json_text(j);
}

std::string report_markdown(const Report& r) {
  std::string s = fmt::format("# Gate-log analysis\n\n{} log(s), {} documents, {} tokens; {} layers x {} KV heads, "
                              "W {}, tau {}, gating {}\n\n",
                              r.logs.size(), r.documents, r.tokens, r.n_layers, r.n_kv_heads, r.window, r.tau, r.gating_mode);
  auto cell = [](const Summary& x) { return fmt::format("{:.3f} [{:.3f}, {:.3f}]", x.mean, x.ci_low, x.ci_high); };
  s += fmt::format("Density (kept / eligible keys): **{}** overall, 95% bootstrap interval over documents.\n\n", cell(r.overall));
  s += "| layer | layer density |";
  for (int64_t h = 0; h < r.n_kv_heads; ++h) s += fmt::format(" head {} |", h);
  s += "\n|---|---|";
  for (int64_t h = 0; h < r.n_kv_heads; ++h) s += "---|";
  s += "\n";
  for (int64_t il = 0; il < r.n_layers; ++il) {
    s += fmt::format("| {} | {} |", il, cell(r.per_layer[il]));
    for (int64_t h = 0; h < r.n_kv_heads; ++h) s += fmt::format(" {:.3f} ± {:.3f} |", r.per_head[il * r.n_kv_heads + h].mean,
                                                                 r.per_head[il * r.n_kv_heads + h].stddev);
    s += "\n";
  }
  const auto& f = r.compression_fit;
  s += fmt::format("\nCompression (dense KV entries / SP-KV KV entries) against document length over {} documents: "
                   "compression = {:.3g} x tokens + {:.4f} (R^2 {:.3f}).\n",
                   f.n, f.slope, f.intercept, f.r2);
  s += "\nCounterfactual tau (density from the logged u):\n\n| tau |";
  for (double t : r.tau_grid) s += fmt::format(" {:.2f} |", t);
  s += "\n|---|";
  for (size_t k = 0; k < r.tau_grid.size(); ++k) s += "---|";
  s += "\n| density |";
  for (double d : r.tau_overall) s += fmt::format(" {:.3f} |", d);
  s += "\n";
  // Which tokens are kept.
  const auto& t = r.retention;
  auto rate = [](std::pair<int64_t, int64_t> ke) { return ke.second > 0 ? fmt::format("{:.3f}", double(ke.first) / double(ke.second)) : std::string("–"); };
  s += "\nRetention (kept / eligible keys) by token class:\n\n| class | eligible keys | all heads |" + layer_columns(r.n_layers, 3);
  for (int c = 0; c < kTokenClasses; ++c) {
    s += fmt::format("| {} | {} | {} |", token_class_name(TokenClass(c)),
                     sum_heads(t.class_kept[c], t.class_eligible[c], -1, r.n_kv_heads).second,
                     rate(sum_heads(t.class_kept[c], t.class_eligible[c], -1, r.n_kv_heads)));
    for (int64_t il = 0; il < r.n_layers; ++il) s += " " + rate(sum_heads(t.class_kept[c], t.class_eligible[c], il, r.n_kv_heads)) + " |";
    s += "\n";
  }
  s += "\nRetention by position in the document:\n\n| positions | eligible keys | retention |\n|---|---|---|\n";
  for (size_t b = 0; b < t.position_kept.size(); ++b) {
    const auto ke = sum_heads(t.position_kept[b], t.position_eligible[b], -1, r.n_kv_heads);
    if (ke.second > 0) s += fmt::format("| {}–{} | {} | {} |\n", t.position_edges[b], t.position_edges[b + 1] - 1, ke.second, rate(ke));
  }
  auto strings = [](const std::vector<KeptString>& v) {
    std::string out;
    for (const auto& x : v) {
      std::string shown;
      for (char c : x.text) shown += c == '\n' ? std::string("\\n") : c == '`' ? std::string("'") : std::string(1, c);
      out += fmt::format(" `{}` {:.2f} ({}),", shown, x.rate(), x.eligible);
    }
    return out.empty() ? std::string(" –") : out.substr(0, out.size() - 1);
  };
  s += "\nMost kept token strings (all heads):" + strings(t.most_kept_all) + "\n";
  s += "\nLeast kept token strings (all heads):" + strings(t.least_kept_all) + "\n";
  if (r.has_attention) {
    const auto& a = r.attention;
    s += fmt::format("\nBaselines at matched density (each keeps, per document and head, as many eligible keys as the "
                     "gates kept: {} of {}): share of the far attention mass on the kept keys\n\n| policy | all heads |",
                     std::accumulate(a.kept_keys.begin(), a.kept_keys.end(), int64_t(0)),
                     std::accumulate(a.eligible_keys.begin(), a.eligible_keys.end(), int64_t(0)));
    s += layer_columns(r.n_layers, 2);
    for (int p = 0; p < kNumPolicies; ++p) {
      s += fmt::format("| {} | {:.3f} |", kPolicies[p], ratio(sum(a.kept_mass[p]), sum(a.total_mass)));
      for (int64_t il = 0; il < r.n_layers; ++il) {
        double k = 0, t = 0;
        for (int64_t h = 0; h < r.n_kv_heads; ++h) k += a.kept_mass[p][il * r.n_kv_heads + h], t += a.total_mass[il * r.n_kv_heads + h];
        s += fmt::format(" {:.3f} |", ratio(k, t));
      }
      s += "\n";
    }
    s += "\nCalibration: AUROC of u for the keys the oracle keeps, per layer (rows) and KV head:\n\n";
    for (int64_t il = 0; il < r.n_layers; ++il) {
      s += fmt::format("- layer {}:", il);
      for (int64_t h = 0; h < r.n_kv_heads; ++h) s += fmt::format(" {:.3f}", a.auroc[il * r.n_kv_heads + h]);
      s += "\n";
    }
    s += "\n| u | keys | mean u | useful (oracle keeps) | mean far mass |\n|---|---|---|---|---|\n";
    for (const auto& b : a.reliability)
      if (b.keys > 0)
        s += fmt::format("| {:.1f}–{:.1f} | {} | {:.3f} | {:.3f} | {:.4f} |\n", b.lo, b.hi, b.keys, b.sum_u / double(b.keys),
                         double(b.useful) / double(b.keys), b.sum_far / double(b.keys));
  }
  for (const auto& st : r.stability)
    s += fmt::format("\nStability, {} vs {}: per-head density differs by {:.3f} on average (at most {:.3f}); Spearman "
                     "rank correlation {:.3f}\n", r.logs[st.a], r.logs[st.b], st.mean_abs_diff, st.max_abs_diff, st.spearman);
  return s;
}

}  // namespace spkv::analysis
