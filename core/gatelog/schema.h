// The gate log's schema version and the paths of its groups and datasets (docs/hdf5-schema.md), as one list
// that the writer, the reader and the checker share, so that a dataset cannot be written under one name and
// read under another. Not the layout of the data (shapes and types: writer.cpp, checked by reader.cpp).
#pragma once

namespace spkv::schema {

inline constexpr int kVersion = 2;  // 2: policy logs (gating_mode "policy", gates/evicted_at); readers take 1 and 2

// Groups.
inline constexpr const char* kTokens = "tokens";        // per token: (N, ...)
inline constexpr const char* kGates = "gates";          // per token, layer and KV head: (N, L, Hkv)
inline constexpr const char* kDocuments = "documents";  // per document: (D, ...) and CSR offsets
inline constexpr const char* kAttention = "attention";  // dense runs with --attention-stats: (N, L, Hkv)
inline constexpr const char* kSummary = "summary";      // corpus totals (NXentry)

inline constexpr const char* kIds = "tokens/ids";
inline constexpr const char* kNll = "tokens/nll";
inline constexpr const char* kPosition = "tokens/position";
inline constexpr const char* kCacheEntries = "tokens/cache_entries";
inline constexpr const char* kTextOffsets = "tokens/text_offsets";
inline constexpr const char* kTextBytes = "tokens/text_bytes";
inline constexpr const char* kU = "gates/u";
inline constexpr const char* kZ = "gates/z";
inline constexpr const char* kEvictedAt = "gates/evicted_at";  // policy logs only
inline constexpr const char* kReceived = "attention/received";
inline constexpr const char* kReceivedLast = "attention/received_last";
inline constexpr const char* kReceivedFar = "attention/received_far";
inline constexpr const char* kDocTokenOffsets = "documents/token_offsets";
inline constexpr const char* kDocIdOffsets = "documents/id_offsets";
inline constexpr const char* kDocIdBytes = "documents/id_bytes";
inline constexpr const char* kDocKept = "documents/kept";
inline constexpr const char* kDocEligible = "documents/eligible";
inline constexpr const char* kSummaryKept = "summary/kept";
inline constexpr const char* kSummaryEligible = "summary/eligible";
inline constexpr const char* kNDocuments = "summary/n_documents";
inline constexpr const char* kNTokens = "summary/n_tokens";
inline constexpr const char* kOverallDensity = "summary/overall_density";
inline constexpr const char* kDensityGroup = "summary/density";  // NXdata: the heatmap
inline constexpr const char* kDensity = "summary/density/density";
inline constexpr const char* kDensityLayer = "summary/density/layer";
inline constexpr const char* kDensityKvHead = "summary/density/kv_head";

}  // namespace spkv::schema
