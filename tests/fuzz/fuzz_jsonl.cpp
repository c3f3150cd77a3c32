// Fuzz target: JSONL corpora, as plain documents (core/text/documents.cpp) and as task files with spans
// (core/text/tasks.cpp read_tasks_jsonl).
#include "core/text/documents.h"
#include "core/text/tasks.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = spkv::fuzz::as_file(data, size, "corpus.jsonl");
  spkv::fuzz::expect_clean([&] { spkv::read_documents(path, ""); });
  return spkv::fuzz::expect_clean([&] { spkv::read_tasks_jsonl(path); });
}
