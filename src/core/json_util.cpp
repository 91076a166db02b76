#include "moe/core/json_util.h"

#include "moe/core/error.h"

namespace moe {

using json = nlohmann::json;

json parse_json(std::string_view text, const std::string& source) {
  // nlohmann's parser is iterative, but it reports depth to a callback before it builds a
  // level: refusing there keeps the deep value from ever existing.
  bool too_deep = false;
  auto limit = [&](int depth, json::parse_event_t event, json&) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth >= kMaxJsonDepth)
      too_deep = true;
    return !too_deep;
  };
  json j;
  try {
    j = json::parse(text.begin(), text.end(), limit);
  } catch (const json::exception& e) {
    if (!too_deep) MOE_FAIL("{}: not valid JSON ({})", source, e.what());
  }
  MOE_CHECK(!too_deep, "{}: JSON nested deeper than {} levels", source, kMaxJsonDepth);
  return j;
}

namespace {

void excerpt(const json& j, int depth, std::string& out, std::size_t budget) {
  if (out.size() > budget) return;
  if (j.is_array() || j.is_object()) {
    const bool arr = j.is_array();
    if (depth >= 3 && !j.empty()) {
      out += arr ? "[...]" : "{...}";
      return;
    }
    out += arr ? '[' : '{';
    bool first = true;
    for (auto it = j.begin(); it != j.end() && out.size() <= budget; ++it) {
      if (!first) out += ", ";
      first = false;
      if (!arr) out += json(it.key()).dump() + ": ";
      excerpt(*it, depth + 1, out, budget);
    }
    out += arr ? ']' : '}';
    return;
  }
  if (j.is_string() && j.get_ref<const std::string&>().size() > budget) {
    // Only the head of a long string: dumping all of it first would cost its whole size.
    out += json(j.get_ref<const std::string&>().substr(0, budget)).dump();
    return;
  }
  out += j.dump();
}

}  // namespace

std::string json_excerpt(const json& j, std::size_t max_chars) {
  std::string out;
  excerpt(j, 0, out, max_chars);
  if (out.size() > max_chars) {
    out.resize(max_chars);
    out += "…";
  }
  return out;
}

}  // namespace moe
