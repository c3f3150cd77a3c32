// The glossary of dimension letters used in every shape comment, outermost first, e.g. `// (B, T, C)`.
// Header only, no code: one place that says what the letters mean.
//
//   B    batch (sequences processed together)
//   T    tokens (query positions in this call); S = key positions (cached + new)
//   C    model dim (d_model, "dim", "hidden_size")
//   F    MLP hidden dim ("hidden_dim", "intermediate_size")
//   H    query heads;  Hkv  KV heads;  G = H / Hkv query heads per KV head (grouped-query attention)
//   D    head dim (C / H unless the config says otherwise)
//   L    layers (index `il`)
//   V    vocabulary size
//   W    SP-KV local window (keys with 0 <= t - s < W are always visible)
#pragma once
