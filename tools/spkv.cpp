// The `spkv` command line: one binary with subcommands. This file parses arguments, calls the libraries
// and prints; it is the only place that turns exceptions into messages and exit codes.
#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "analysis/stats.h"
#include "core/checkpoint.h"
#include "core/errors.h"
#include "core/generate.h"
#include "core/model.h"
#include "core/progress.h"
#include "core/tokenizer.h"

namespace fs = std::filesystem;
using namespace spkv;

namespace {

struct ModelArgs {
  std::string model, tokenizer;
  void add(CLI::App* app) {
    app->add_option("--model,-m", model, "llama2.c .bin file or Hugging Face model directory")->required();
    app->add_option("--tokenizer,-t", tokenizer, "tokenizer file (default: found beside the model)");
  }
  std::unique_ptr<Tokenizer> load_tokenizer_for(const ModelConfig& c) const {
    auto tok = load_tokenizer(tokenizer.empty() ? default_tokenizer_path(model) : tokenizer);
    if (tok->vocab_size() > c.vocab_size)
      throw TokenizerError(tok->path, fmt::format("has {} tokens but the model's vocab_size is {}",
                                                  tok->vocab_size(), c.vocab_size));
    return tok;
  }
};

void cmd_info(const ModelArgs& a) {
  Checkpoint ck = load_checkpoint(a.model);
  LlamaForCausalLM m(ck.config);
  m->load(ck);
  const ModelConfig& c = ck.config;
  fmt::print("model        {} ({})\n", a.model, ck.format);
  fmt::print("architecture {}\n", c.architecture);
  fmt::print("parameters   {}\n", m->parameter_count());
  fmt::print("dim {}  hidden_dim {}  layers {}  heads {}  kv_heads {}  head_dim {}\n", c.dim, c.hidden_dim,
             c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim);
  fmt::print("vocab {}  context {}  norm_eps {:g}  tied_embeddings {}  attention_bias {}\n", c.vocab_size,
             c.max_seq_len, c.norm_eps, c.tied_embeddings, c.attention_bias);
  fmt::print("rope {}  theta {:g}  scaling {} (factor {:g})  sliding_window {}\n", to_string(c.rope_style),
             c.rope_theta, c.rope_scaling.type, c.rope_scaling.factor, c.sliding_window);
  fmt::print("tokenizer    {}\n", a.load_tokenizer_for(c)->summary());
}

void cmd_generate(const ModelArgs& a, const std::string& prompt, int64_t max_new, const SamplerOptions& so) {
  auto model = load_model(a.model);
  auto tok = a.load_tokenizer_for(model->config);
  std::vector<int32_t> ids = tok->encode(prompt, /*bos=*/true, /*eos=*/false);
  if (int64_t(ids.size()) >= model->config.max_seq_len)
    throw InputError(fmt::format("the prompt has {} tokens, the model's context is {}", ids.size(),
                                 model->config.max_seq_len));
  std::string out = tok->decode(ids);
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
  int32_t prev = ids.back();
  generate(model, ids, max_new, so, [&](int32_t id) {
    const std::string piece = tok->token_bytes(prev, id);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    prev = id;
  });
  if (isatty(fileno(stdout))) std::fputc('\n', stderr);
}

// Text documents from a file or folder (recursive, sorted), split on `separator` ("" = whole files).
std::vector<std::pair<std::string, std::string>> read_documents(const std::string& input, const std::string& separator) {
  std::vector<fs::path> files;
  if (fs::is_directory(input)) {
    for (auto& e : fs::recursive_directory_iterator(input))
      if (e.is_regular_file() && e.path().extension() == ".txt") files.push_back(e.path());
    std::sort(files.begin(), files.end());
  } else if (fs::is_regular_file(input)) {
    files.push_back(input);
  } else {
    throw InputError(input + ": no such file or directory");
  }
  std::vector<std::pair<std::string, std::string>> docs;
  for (auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) throw InputError(f.string() + ": cannot open");
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    size_t pos = 0;
    int part = 0;
    while (pos <= text.size()) {
      size_t end = separator.empty() ? std::string::npos : text.find(separator, pos);
      std::string doc = text.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
      const size_t a = doc.find_first_not_of(" \t\r\n"), b = doc.find_last_not_of(" \t\r\n");
      if (a != std::string::npos) docs.emplace_back(f.string() + "#" + std::to_string(part++), doc.substr(a, b - a + 1));
      if (end == std::string::npos) break;
      pos = end + separator.size();
    }
  }
  if (docs.empty()) throw InputError(input + ": no documents (no non-empty .txt text)");
  return docs;
}

void cmd_eval(const ModelArgs& a, const std::string& input, const std::string& separator, int64_t max_docs) {
  auto model = load_model(a.model);
  auto tok = a.load_tokenizer_for(model->config);
  auto docs = read_documents(input, separator);
  if (max_docs > 0 && int64_t(docs.size()) > max_docs) docs.resize(max_docs);
  std::vector<std::vector<int32_t>> ids;
  int64_t total = 0;
  for (auto& d : docs) {
    ids.push_back(tok->encode(d.second, /*bos=*/true, /*eos=*/false));
    total += int64_t(ids.back().size()) - 1;
  }
  std::vector<double> doc_mean, doc_tokens;
  double sum = 0;
  int64_t n = 0;
  Progress bar("eval", total, "tok");
  for (auto& t : ids) {
    auto nll = token_nll(model, t);
    if (nll.empty()) continue;
    double s = 0;
    for (double x : nll) s += x;
    sum += s, n += int64_t(nll.size());
    doc_mean.push_back(s / double(nll.size()));
    doc_tokens.push_back(double(nll.size()));
    bar.add(int64_t(nll.size()), fmt::format("nll {:.4f}", sum / double(n)));
  }
  bar.finish();
  if (n == 0) throw InputError(input + ": no document has two or more tokens to score");
  auto s = analysis::summarize(doc_mean, doc_tokens);
  fmt::print("documents   {}\n", doc_mean.size());
  fmt::print("tokens      {} (scored; BOS first, every later token predicted once)\n", n);
  fmt::print("mean NLL    {:.6f} nats/token\n", sum / double(n));
  fmt::print("perplexity  {:.4f}\n", std::exp(sum / double(n)));
  fmt::print("per-document: mean {:.4f} (token-weighted), std {:.4f}, 95% bootstrap CI [{:.4f}, {:.4f}]\n",
             s.mean, s.stddev, s.ci_low, s.ci_high);
}

// Writes a Hugging Face-style directory. llama2.c weights (interleaved RoPE) get HF's q/k row permutation,
// so the result is an ordinary rotate-half Llama checkpoint.
void cmd_convert(const ModelArgs& a, const std::string& out) {
  Checkpoint ck = load_checkpoint(a.model);
  LlamaForCausalLM m(ck.config);
  m->load(ck);
  auto tensors = m->named_tensors();
  ModelConfig c = ck.config;
  if (c.rope_style == RopeStyle::interleaved) {
    for (auto& [name, t] : tensors) {
      if (name.find("q_proj.weight") != std::string::npos) t = permute_for_rotate_half(t, c.n_heads);
      if (name.find("k_proj.weight") != std::string::npos) t = permute_for_rotate_half(t, c.n_kv_heads);
    }
    c.rope_style = RopeStyle::rotate_half;
  }
  save_hf_checkpoint(out, c, tensors, {{"converted_from", a.model}});
  const std::string tok_src = a.tokenizer.empty() ? default_tokenizer_path(a.model) : a.tokenizer;
  const fs::path tok_dst = fs::path(out) / (fs::path(tok_src).extension() == ".json" ? "tokenizer.json"
                                            : fs::path(tok_src).extension() == ".model" ? "tokenizer.model"
                                                                                         : "tokenizer.bin");
  fs::copy_file(tok_src, tok_dst, fs::copy_options::overwrite_existing);
  fmt::print("wrote {} ({} tensors, rope {}) and {}\n", out, tensors.size(), to_string(c.rope_style), tok_dst.string());
}

std::string one_line(std::string s) {
  const size_t nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"spkv: Self-Pruned KV attention toolkit"};
  app.set_version_flag("--version", std::string(SPKV_VERSION) + " (" + SPKV_GIT_COMMIT + ")");
  app.require_subcommand(1);
  int threads = int(std::thread::hardware_concurrency());
  app.add_option("--threads", threads, "CPU threads for LibTorch")->check(CLI::PositiveNumber);

  ModelArgs ma;
  auto* info = app.add_subcommand("info", "show a model's config, parameter count and tokenizer");
  ma.add(info);

  auto* gen = app.add_subcommand("generate", "continue a prompt; prints prompt + continuation on stdout");
  ma.add(gen);
  std::string prompt;
  int64_t max_new = 256;
  SamplerOptions so;
  gen->add_option("--prompt,-p", prompt, "prompt text")->required();
  gen->add_option("--max-new-tokens,-n", max_new, "tokens to generate")->check(CLI::NonNegativeNumber);
  gen->add_option("--temperature", so.temperature, "0 = greedy")->check(CLI::Range(0.0, 100.0));
  gen->add_option("--top-p", so.top_p, "nucleus sampling mass")->check(CLI::Range(0.0, 1.0));
  gen->add_option("--seed", so.seed, "sampling seed");

  auto* ev = app.add_subcommand("eval", "mean NLL per token and perplexity over a text file or folder");
  ma.add(ev);
  std::string input, separator = "<|endoftext|>";
  int64_t max_docs = 0;
  ev->add_option("input", input, "text file, or folder of .txt files (recursive)")->required();
  ev->add_option("--separator", separator, "document separator inside files (\"\" = one document per file)");
  ev->add_option("--max-docs", max_docs, "score at most this many documents (0 = all)");

  auto* conv = app.add_subcommand("convert", "write a model as a Hugging Face-style directory");
  ma.add(conv);
  std::string out;
  conv->add_option("--out,-o", out, "output directory")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    at::set_num_threads(threads);
    if (*info) cmd_info(ma);
    if (*gen) cmd_generate(ma, prompt, max_new, so);
    if (*ev) cmd_eval(ma, input, separator, max_docs);
    if (*conv) cmd_convert(ma, out);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "spkv: error: %s\n", one_line(e.what()).c_str());
    return 1;
  }
  return 0;
}
