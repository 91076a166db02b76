// JSON from outside (configs, checkpoint metadata, safetensors headers, sweep logs) is hostile
// until checked: these helpers bound what it can do to us.
//   parse_json   refuses nesting deeper than kMaxJsonDepth before any recursive code (our
//                readers, nlohmann's dump()) can walk it, and names the source on any error;
//   json_excerpt shows a value in an error message in at most max_chars characters, without
//                recursing deeper than a few levels (a bad value may be 20 MB or 100 000 deep).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace moe {

// Deep enough for every file we read (a config is 4 levels deep), far below what overflows the
// stack of a recursive walk.
inline constexpr int kMaxJsonDepth = 64;

// Parses `text`; `source` names it in errors ("configs/a.json", "ckpt.safetensors: __metadata__
// .config"). Throws moe::Error for invalid JSON or nesting deeper than kMaxJsonDepth.
nlohmann::json parse_json(std::string_view text, const std::string& source);

// A short rendering of j for error messages: JSON text cut to max_chars (with "…" when cut);
// containers nested deeper than 3 levels print as [...] / {...}.
std::string json_excerpt(const nlohmann::json& j, std::size_t max_chars = 60);

}  // namespace moe
