// A plain-C face over libsentencepiece, built as its own module and loaded with
// dlopen(RTLD_LOCAL | RTLD_DEEPBIND) by sp_tokenizer.cpp (sanitizer builds: dlmopen into a namespace of
// its own). Why: Debian's libsentencepiece carries a private copy of protobuf whose exported symbols clash
// with the libprotobuf that LibTorch loads; linked into one process directly, the two crash at start-up.
// Loaded this way, each keeps its own.
#include <sentencepiece_processor.h>

#include <cstring>
#include <string>
#include <vector>

extern "C" {

void* spkv_sp_load(const char* path, char* err, size_t err_len) {
  auto* sp = new sentencepiece::SentencePieceProcessor();
  auto st = sp->Load(path);
  if (!st.ok()) {
    std::snprintf(err, err_len, "%s", st.ToString().c_str());
    delete sp;
    return nullptr;
  }
  return sp;
}

void spkv_sp_free(void* h) { delete static_cast<sentencepiece::SentencePieceProcessor*>(h); }

// Writes up to cap ids; returns how many the text encodes to (call again with more room if larger).
int spkv_sp_encode(void* h, const char* text, size_t len, int* out, int cap) {
  std::vector<int> ids;
  static_cast<sentencepiece::SentencePieceProcessor*>(h)->Encode(std::string(text, len), &ids);
  for (int i = 0; i < int(ids.size()) && i < cap; ++i) out[i] = ids[i];
  return int(ids.size());
}

const char* spkv_sp_piece(void* h, int id) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(h)->IdToPiece(id).c_str();
}
int spkv_sp_piece_to_id(void* h, const char* piece) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(h)->PieceToId(piece);
}
// what: 0 size, 1 bos, 2 eos, 3 unk; 4/5/6 = is control/byte/unknown for id.
int spkv_sp_query(void* h, int what, int id) {
  auto* sp = static_cast<sentencepiece::SentencePieceProcessor*>(h);
  switch (what) {
    case 0: return sp->GetPieceSize();
    case 1: return sp->bos_id();
    case 2: return sp->eos_id();
    case 3: return sp->unk_id();
    case 4: return sp->IsControl(id);
    case 5: return sp->IsByte(id);
    case 6: return sp->IsUnknown(id);
  }
  return -1;
}
}
