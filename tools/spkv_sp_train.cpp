// spkv-sp-train ARGS LOG: runs SentencePiece training with trainer flags ARGS, writing the library's log
// (and any error, first line) to LOG. A separate process so that libsentencepiece_train never shares
// an address space with LibTorch's protobuf. Called by spkv::train_sentencepiece.
#include <sentencepiece_trainer.h>

#include <cstdio>
#include <fstream>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: spkv-sp-train TRAINER_FLAGS LOG\n");
    return 2;
  }
  if (!std::freopen(argv[2], "w", stderr)) return 2;
  auto st = sentencepiece::SentencePieceTrainer::Train(argv[1]);
  if (st.ok()) return 0;
  std::fclose(stderr);
  std::ofstream(argv[2]) << st.ToString() << "\n";
  return 1;
}
