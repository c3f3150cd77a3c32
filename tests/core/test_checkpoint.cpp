// Checkpoint loading: f32/f16/bf16 safetensors, sharded indexes, and every malformed-input case, both as
// a typed exception from the library and as a one-line error with a non-zero exit from the CLI.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/base/errors.h"
#include "core/model/checkpoint.h"
#include "core/model/model.h"
#include "core/model/safetensors.h"
#include "tests/test_util.h"

namespace spkv {
namespace {
using json = nlohmann::json;

ModelConfig tiny_config() {
  ModelConfig c;
  c.dim = 16, c.hidden_dim = 24, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 4;
  c.vocab_size = 40, c.max_seq_len = 32;
  return c;
}

// A tiny random model saved as an HF directory; returns its tensors.
std::map<std::string, torch::Tensor> save_tiny(const std::string& dir, const ModelConfig& c = tiny_config()) {
  torch::manual_seed(7);
  LlamaForCausalLM m(c);
  auto t = m->named_tensors();
  save_hf_checkpoint(dir, c, t);
  return t;
}

std::vector<TensorView> views_of(const std::map<std::string, torch::Tensor>& t) {
  std::vector<TensorView> v;
  for (auto& [n, x] : t) v.push_back({n, DType::f32, x.sizes().vec(), x.data_ptr(), size_t(x.numel()) * 4});
  return v;
}

// IEEE half bits of a value that is exactly representable as a normal half (or zero).
uint16_t half_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFF) == 0) return uint16_t(u >> 16);
  const uint32_t sign = (u >> 31) << 15, exp = ((u >> 23) & 0xFF) - 127 + 15, man = (u & 0x7FFFFF) >> 13;
  return uint16_t(sign | (exp << 10) | man);
}

TEST(Checkpoint, ReadsF16AndBf16AsFloat32) {
  test::TempDir dir;
  const std::vector<float> vals = {0.5f, -1.25f, 3.0f, 0.0f, -0.0078125f, 96.0f};  // exact in f16 and bf16
  std::vector<uint16_t> h, b;
  for (float v : vals) {
    h.push_back(half_bits(v));
    uint32_t u;
    std::memcpy(&u, &v, 4);
    b.push_back(uint16_t(u >> 16));
  }
  write_safetensors(dir / "x.safetensors", {{"h", DType::f16, {2, 3}, h.data(), 12}, {"b", DType::bf16, {3, 2}, b.data(), 12}});
  SafetensorsFile st(dir / "x.safetensors");
  ASSERT_EQ(st.get("h").shape, (std::vector<int64_t>{2, 3}));
  // Through the checkpoint loader (which converts to f32): a tiny model in bf16 equals its f32 original.
  auto t = save_tiny(dir.path.string());
  std::vector<torch::Tensor> keep;
  std::vector<TensorView> v16;
  for (auto& [n, x] : t) {
    keep.push_back(x.to(torch::kBFloat16).contiguous());
    v16.push_back({n, DType::bf16, x.sizes().vec(), keep.back().data_ptr(), size_t(x.numel()) * 2});
  }
  write_safetensors(dir / "model.safetensors", v16);
  Checkpoint ck = load_checkpoint(dir.path.string());
  for (auto& [n, x] : t) {
    auto want = x.to(torch::kBFloat16).to(torch::kFloat32);
    EXPECT_TRUE(torch::equal(ck.tensors.at(n), want)) << n;
    if (n.find("proj") != std::string::npos)  // random weights: bf16 rounding must show (norms are all ones)
      EXPECT_GT((ck.tensors.at(n) - x).abs().max().item<double>(), 0.0) << n;
  }
  // The hand-encoded values decode to what they encode.
  auto hf = torch::from_blob(const_cast<void*>(st.get("h").data), {6}, torch::kFloat16).to(torch::kFloat32);
  auto bf = torch::from_blob(const_cast<void*>(st.get("b").data), {6}, torch::kBFloat16).to(torch::kFloat32);
  for (size_t i = 0; i < vals.size(); ++i) {
    EXPECT_EQ(hf[i].item<float>(), vals[i]);
    EXPECT_EQ(bf[i].item<float>(), vals[i]);
  }
}

TEST(Checkpoint, ShardedIndexLoadsLikeSingleFile) {
  test::TempDir dir;
  auto t = save_tiny(dir.path.string());
  std::filesystem::remove(dir / "model.safetensors");
  std::map<std::string, torch::Tensor> a, b;
  json wm;
  int i = 0;
  for (auto& [n, x] : t) {
    (i++ % 2 ? a : b)[n] = x;
    wm[n] = i % 2 ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  write_safetensors(dir / "model-00001-of-00002.safetensors", views_of(a));
  write_safetensors(dir / "model-00002-of-00002.safetensors", views_of(b));
  test::write_file(dir / "model.safetensors.index.json", json{{"metadata", json::object()}, {"weight_map", wm}}.dump());
  auto m = load_model(dir.path.string());
  for (auto& [n, x] : m->named_tensors()) EXPECT_TRUE(torch::equal(x, t.at(n))) << n;
}

// One malformed case: prepares the directory, names the expected words of the message.
struct BadCase {
  const char* name;
  std::function<void(const std::string& dir, std::map<std::string, torch::Tensor>& t)> make;
  std::vector<std::string> expect;  // substrings of the error message
};

// Rewrites the header of the safetensors file at `path` with edit(header text), keeping its data bytes.
void edit_header(const std::string& path, const std::function<std::string(const json&, const std::string&)>& edit) {
  const std::string bytes = test::read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const std::string text = bytes.substr(8, n);
  const std::string h = edit(json::parse(text), text);
  std::string out(8, '\0');
  const uint64_t m = h.size();
  std::memcpy(out.data(), &m, 8);
  test::write_file(path, out + h + bytes.substr(8 + n));
}

// A file of one tensor with a hand-written header entry and `data` bytes.
void one_tensor_file(const std::string& path, const std::string& entry, size_t data) {
  const std::string h = R"({"model.norm.weight":)" + entry + "}";
  std::string bytes(8, '\0');
  const uint64_t n = h.size();
  std::memcpy(bytes.data(), &n, 8);
  test::write_file(path, bytes + h + std::string(data, '\1'));
}

std::vector<BadCase> bad_cases() {
  auto st = [](const std::string& d) { return d + "/model.safetensors"; };
  const std::string a = "model.layers.0.input_layernorm.weight", b = "model.layers.1.input_layernorm.weight";
  return {
      {"duplicate tensor name",
       [=](const std::string& d, auto&) {
         edit_header(st(d), [&](const json& h, const std::string& text) {
           return "{\"" + a + "\":" + h[a].dump() + "," + text.substr(1);
         });
       },
       {"model.safetensors", a, "appears twice"}},
      {"overlapping data_offsets",
       [=](const std::string& d, auto&) {
         edit_header(st(d), [&](const json& h, const std::string&) {
           json e = h;
           e[b]["data_offsets"] = h[a]["data_offsets"];  // same size, same bytes: b would read a's weights
           return e.dump();
         });
       },
       {"model.safetensors", "inside the previous tensor", "contiguous"}},
      {"bytes after the last tensor",
       [=](const std::string& d, auto&) { test::write_file(st(d), test::read_file(st(d)) + std::string(8, '\0')); },
       {"model.safetensors", "no unindexed bytes"}},
      {"misaligned data_offsets",
       [=](const std::string& d, auto&) { one_tensor_file(st(d), R"({"dtype":"F32","shape":[16],"data_offsets":[2,66]})", 66); },
       {"model.safetensors", "model.norm.weight", "begin 2 is not a multiple of the F32 element size"}},
      {"shape whose size overflows",
       [=](const std::string& d, auto&) {
         one_tensor_file(st(d), R"({"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,64]})", 64);
       },
       {"model.safetensors", "model.norm.weight", "overflows 64 bits"}},
      {"truncated file",
       [=](const std::string& d, auto&) { std::filesystem::resize_file(st(d), std::filesystem::file_size(st(d)) - 100); },
       {"model.safetensors", "truncated"}},
      {"header length past end of file",
       [=](const std::string& d, auto&) {
         std::string bytes = test::read_file(st(d));
         const uint64_t big = bytes.size() + 1000;
         std::memcpy(bytes.data(), &big, 8);
         test::write_file(st(d), bytes);
       },
       {"model.safetensors", "header length", "past the end"}},
      {"bad JSON in the header",
       [=](const std::string& d, auto&) {
         std::string bytes = test::read_file(st(d));
         bytes[8] = '[';
         bytes[9] = '{';
         test::write_file(st(d), bytes);
       },
       {"model.safetensors", "not valid JSON"}},
      {"bad JSON in config.json",
       [](const std::string& d, auto&) { test::write_file(d + "/config.json", "{\"hidden_size\": 16,,}"); },
       {"config.json", "invalid JSON"}},
      {"missing tensor",
       [=](const std::string& d, auto& t) {
         t.erase("model.layers.1.mlp.up_proj.weight");
         write_safetensors(st(d), views_of(t));
       },
       {"missing tensor", "model.layers.1.mlp.up_proj.weight"}},
      {"wrong shape",
       [=](const std::string& d, auto& t) {
         t["model.norm.weight"] = torch::ones({17});
         write_safetensors(st(d), views_of(t));
       },
       {"model.safetensors", "model.norm.weight", "[17]", "[16]"}},
      {"unknown dtype",
       [=](const std::string& d, auto&) {
         std::string h = R"({"model.norm.weight":{"dtype":"F12","shape":[16],"data_offsets":[0,64]}})";
         std::string bytes(8, '\0');
         const uint64_t n = h.size();
         std::memcpy(bytes.data(), &n, 8);
         test::write_file(st(d), bytes + h + std::string(64, '\1'));
       },
       {"model.safetensors", "model.norm.weight", "unknown dtype 'F12'"}},
      {"config contradicts weights",
       [](const std::string& d, auto&) {
         ModelConfig c = tiny_config();
         c.n_kv_heads = 4;  // the weights were made with 2 KV heads
         test::write_file(d + "/config.json", c.to_hf_json());
       },
       {"k_proj.weight", "[8, 16]", "implies [16, 16]", "config.json"}},
      {"config with more layers than the weights",
       [](const std::string& d, auto&) {
         ModelConfig c = tiny_config();
         c.n_layers = 3;
         test::write_file(d + "/config.json", c.to_hf_json());
       },
       {"missing tensor", "model.layers.2."}},
      {"config with far more layers than the weights (checked before the model is built)",
       [](const std::string& d, auto&) {
         ModelConfig c = tiny_config();
         c.n_layers = 16000000;  // building the model, or listing its parameters, first would take gigabytes
         test::write_file(d + "/config.json", c.to_hf_json());
       },
       {"missing tensor", "model.layers.2.", "16000000 layers, the weights 2"}},
      {"a wrong type inside a list in config.json",
       [](const std::string& d, auto&) {
         json j = json::parse(tiny_config().to_hf_json());
         j["architectures"] = {5};
         test::write_file(d + "/config.json", j.dump());
       },
       {"config.json", "architectures[0]", "wrong type"}},
      {"bos_token_id past the vocabulary",
       [](const std::string& d, auto&) {
         ModelConfig c = tiny_config();
         c.bos_id = c.vocab_size;
         test::write_file(d + "/config.json", c.to_hf_json());
       },
       {"config.json", "bos_token_id", "outside the vocabulary"}},
      {"a size whose tensors could not be allocated",
       [](const std::string& d, auto&) {
         json j = json::parse(tiny_config().to_hf_json());
         j["intermediate_size"] = int64_t(1) << 40;
         test::write_file(d + "/config.json", j.dump());
       },
       {"config.json", "intermediate_size 1099511627776 is over the supported"}},
      {"an integer field given as a huge float (casting it is undefined behaviour)",
       [](const std::string& d, auto&) {
         json j = json::parse(tiny_config().to_hf_json());
         j["num_hidden_layers"] = 3.5e104;
         test::write_file(d + "/config.json", j.dump());
       },
       {"config.json", "'num_hidden_layers' must be an integer"}},
      {"a number too large for any JSON number type",
       [](const std::string& d, auto&) {
         std::string text = tiny_config().to_hf_json();
         text.replace(text.find('{'), 1, "{\"rope_theta\": 1e99999, ");
         test::write_file(d + "/config.json", text);
       },
       {"config.json", "invalid JSON", "number overflow"}},
      {"a shard index whose file name is not a string",
       [=](const std::string& d, auto&) {
         std::filesystem::remove(st(d));
         test::write_file(d + "/model.safetensors.index.json", R"({"weight_map": {"model.norm.weight": 3}})");
       },
       {"model.safetensors.index.json", "weight_map['model.norm.weight']", "shard file name"}},
  };
}

TEST(Checkpoint, EveryMalformedCaseThrowsATypedErrorNamingTheProblem) {
  for (auto& bc : bad_cases()) {
    test::TempDir dir;
    auto t = save_tiny(dir.path.string());
    bc.make(dir.path.string(), t);
    try {
      load_model(dir.path.string());
      ADD_FAILURE() << bc.name << ": no error";
    } catch (const Error& e) {  // CheckpointError or ConfigError: both are spkv::Error
      for (auto& w : bc.expect) EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << bc.name << ": " << e.what();
    }
  }
}

TEST(Checkpoint, EveryMalformedCaseGivesOneLineCliErrorAndNonZeroExit) {
  for (auto& bc : bad_cases()) {
    test::TempDir dir;
    auto t = save_tiny(dir.path.string());
    bc.make(dir.path.string(), t);
    test::write_file(dir / "tokenizer.json", "{}");
    auto r = test::run_spkv("info --model " + test::quote(dir.path.string()));
    EXPECT_EQ(r.exit_code, 1) << bc.name;
    EXPECT_EQ(r.err.rfind("spkv: error: ", 0), 0u) << bc.name << ": " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << bc.name << ": " << r.err;
    EXPECT_NE(r.err.find(dir.path.string()), std::string::npos) << bc.name << ": the message names no file: " << r.err;
    EXPECT_TRUE(r.out.empty()) << bc.name;
  }
}

TEST(Checkpoint, ConvertWithoutATokenizerWritesNothing) {
  test::TempDir dir;
  save_tiny(dir / "m");
  auto r = test::run_spkv("convert --model " + test::quote(dir / "m") + " --out " + test::quote(dir / "out"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no tokenizer found"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "out")) << "a half-written conversion was left behind";
}

TEST(Checkpoint, ParameterShapesAreTheModelsParametersInOrder) {
  for (int variant = 0; variant < 4; ++variant) {
    ModelConfig c = tiny_config();
    c.tied_embeddings = variant % 2;
    c.attention_bias = variant >= 2;
    if (variant >= 1) c.spkv.enabled = true, c.spkv.predictor_layers = variant == 3 ? 2 : 1;
    LlamaForCausalLM m(c);
    std::vector<std::pair<std::string, std::vector<int64_t>>> actual;
    for (auto& item : m->named_parameters()) actual.emplace_back(item.key(), item.value().sizes().vec());
    EXPECT_EQ(parameter_shapes(c), actual) << "variant " << variant;
  }
}

TEST(Checkpoint, TruncatedLlama2cFileIsRejected) {
  SPKV_REQUIRE_SHARED();
  test::TempDir dir;
  std::string bytes = test::read_file(test::shared_dir() + "/models/stories260K/stories260K.bin");
  test::write_file(dir / "m.bin", bytes.substr(0, bytes.size() - 4));
  auto r = test::run_spkv("info --model " + test::quote(dir / "m.bin") + " --tokenizer " +
                          test::quote(test::shared_dir() + "/models/stories260K/tok512.bin"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("m.bin: truncated file"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(std::to_string(bytes.size())), std::string::npos) << r.err;  // the expected size
}

// remove_tree replaces std::filesystem::remove_all (see core/model/safetensors.h): it removes nested folders and
// files, does nothing for a missing path, and removes a symbolic link without following it.
TEST(Checkpoint, RemoveTreeRemovesNestedFoldersButNotWhatLinksPointTo) {
  namespace fs = std::filesystem;
  test::TempDir tmp;
  const fs::path run = tmp.path / "run", kept = tmp.path / "kept";
  fs::create_directories(run / "checkpoints" / "step-0000010");
  fs::create_directories(kept);
  std::ofstream(run / "train_log.jsonl") << "{}\n";
  std::ofstream(run / "checkpoints" / "step-0000010" / "optimizer.pt") << "x";
  std::ofstream(kept / "model.safetensors") << "y";
  fs::create_directory_symlink(kept, run / "checkpoints" / "link");
  remove_tree(run.string());
  EXPECT_FALSE(fs::exists(fs::symlink_status(run)));
  EXPECT_TRUE(fs::exists(kept / "model.safetensors"));
  EXPECT_NO_THROW(remove_tree((tmp.path / "missing").string()));
  std::ofstream(tmp.path / "file") << "z";
  remove_tree((tmp.path / "file").string());
  EXPECT_FALSE(fs::exists(tmp.path / "file"));
}

TEST(Checkpoint, SaveIsAtomicAndReloadsExactly) {
  test::TempDir dir;
  auto t = save_tiny(dir.path.string());
  for (auto& e : std::filesystem::directory_iterator(dir.path))
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
  auto m = load_model(dir.path.string());
  for (auto& [n, x] : m->named_tensors()) EXPECT_TRUE(torch::equal(x, t.at(n))) << n;
}


// `spkv` answers --help, --version and info without LibTorch (tools/spkv.cpp) and hands every other command
// to spkv-torch: what it answers must be what spkv-torch answers, byte for byte, exit code included.
TEST(Cli, FrontAnswersWhatTheTorchBinaryAnswers) {
  test::TempDir dir;
  ModelConfig c = tiny_config();
  c.tied_embeddings = false, c.attention_bias = true, c.spkv.enabled = true, c.spkv.predictor_layers = 2;
  save_tiny(dir / "m", c);
  test::write_file(dir / "m/tokenizer.json", "{}");  // a broken tokenizer: info fails after the model lines
  const std::string m = test::quote(dir / "m");
  for (const std::string& args : std::vector<std::string>{"--help", "--version", "", "info --help", "info -m " + m, "--threads 0 info -m " + m,
                                 "info -m " + test::quote(dir / "missing"), "bogus", "--threads 1 bogus"}) {
    const auto front = test::run_spkv(args);
    const auto torch = test::run_spkv_as(SPKV_TORCH_BIN, args);
    EXPECT_EQ(front.out, torch.out) << args;
    EXPECT_EQ(front.err, torch.err) << args;
    EXPECT_EQ(front.exit_code, torch.exit_code) << args;
  }
  // The parameter count comes from the index, not from a model: it must be the model's.
  const auto r = test::run_spkv("info -m " + m);
  EXPECT_NE(r.out.find("parameters   " + std::to_string(LlamaForCausalLM(c)->parameter_count()) + "\n"), std::string::npos)
      << r.out;
  EXPECT_EQ(index_checkpoint(dir / "m").parameter_count(), LlamaForCausalLM(c)->parameter_count());
}

TEST(Cli, FrontWithoutTheTorchBinarySaysSoInOneLine) {
  test::TempDir dir;
  std::filesystem::copy_file(SPKV_BIN, dir / "spkv");
  std::filesystem::permissions(dir / "spkv", std::filesystem::perms::owner_all);
  const auto r = test::run_spkv_as(dir / "spkv", "generate -m x");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "spkv: error: " + (dir / "spkv-torch") +
                       ": cannot run the LibTorch half of spkv: No such file or directory\n");
}

}  // namespace
}  // namespace spkv
