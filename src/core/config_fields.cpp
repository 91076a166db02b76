#include "moe/core/config_fields.h"

#include <set>

#include "moe/core/json_util.h"

namespace moe::detail {

using json = nlohmann::json;

std::string join_path(const std::string& at, const std::string& path) {
  if (at.empty()) return path;
  if (path.empty()) return at;
  return at + "." + path;
}

void require_object(const json& j, const std::string& source, const std::string& where) {
  MOE_CHECK(j.is_object(), "{}: field {}: expected a JSON object, got {}", source,
            where.empty() ? "<root>" : where, json_excerpt(j));
}

const json* find_path(const json& j, const std::string& path, const std::string& source,
                      const std::string& at) {
  const json* node = &j;
  std::size_t start = 0;
  for (std::size_t dot; (dot = path.find('.', start)) != std::string::npos; start = dot + 1) {
    const std::string key = path.substr(start, dot - start);
    if (!node->contains(key)) return nullptr;
    node = &(*node)[key];
    require_object(*node, source, join_path(at, path.substr(0, dot)));
  }
  const std::string key = path.substr(start);
  return node->contains(key) ? &(*node)[key] : nullptr;
}

namespace {

// Rejects the keys of the object j, found at `prefix` (relative to the table) and full path
// `where`, that are no declared path or prefix of one; recurses into prefixes.
void reject_unknown_at(const json& j, const std::vector<std::string>& paths,
                       const std::string& prefix, const std::string& source,
                       const std::string& where) {
  // The keys declared directly under `prefix`: the next path component of every path below it.
  std::set<std::string> known, leaves;
  for (const std::string& p : paths) {
    if (!prefix.empty() && p.compare(0, prefix.size() + 1, prefix + ".") != 0) continue;
    const std::string rest = prefix.empty() ? p : p.substr(prefix.size() + 1);
    const std::size_t dot = rest.find('.');
    known.insert(rest.substr(0, dot));
    if (dot == std::string::npos) leaves.insert(rest);
  }
  for (const auto& [k, v] : j.items()) {
    if (k == "comment" || k == "_comment") continue;  // free-text notes are allowed anywhere
    if (!known.count(k)) {
      std::string list;
      for (const std::string& s : known) list += (list.empty() ? "" : ", ") + s;
      MOE_FAIL("{}: unknown field {} (known fields here: {})", source, join_path(where, k), list);
    }
    if (!leaves.count(k) && v.is_object())
      reject_unknown_at(v, paths, join_path(prefix, k), source, join_path(where, k));
  }
}

}  // namespace

void reject_unknown(const json& j, const std::vector<std::string>& paths, const std::string& source,
                    const std::string& at) {
  reject_unknown_at(j, paths, "", source, at);
}

void wrong_type(const json& v, const char* expected, const std::string& source,
                const std::string& where) {
  MOE_FAIL("{}: field {}: got {}, expected {}", source, where, json_excerpt(v), expected);
}

std::string show_number(double v) { return fmt::format("{}", v); }
std::string show_number(float v) { return fmt::format("{}", v); }
std::string quoted(const std::string& s) { return json(s).dump(); }

std::string markdown_row(const std::string& path, const std::string& shown_default,
                         const std::string& doc) {
  const bool quoted = shown_default.size() >= 2 && shown_default.front() == '"';
  const std::string d = quoted
                            ? fmt::format("`{}`", shown_default.substr(1, shown_default.size() - 2))
                            : shown_default;
  return fmt::format("| `{}` | {} | {} |\n", path, d, doc);
}

}  // namespace moe::detail
