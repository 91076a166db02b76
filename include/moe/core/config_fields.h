// Declared config fields. Each field of a config struct is declared once, in a FieldTable: its
// dotted JSON path, the member that holds it, the rule its value must satisfy and one line of
// documentation. That declaration drives
//   - parsing (strict: an unknown field, a wrong type or a bad value stops with one line naming
//     the file, the field's dotted path, the value and what is allowed),
//   - `--set a.b=value` (it edits the JSON before parsing, so it is checked the same way),
//   - to_json, and
//   - the README's config tables (markdown(); a test keeps README.md equal to it).
// Defaults are the struct's member initialisers: the table reads them from a default-constructed
// struct, so a default is written in one place.
//
// Enums have one table of JSON spellings each (see ConfigEnum); parsing, printing and the
// "expected one of: ..." text all read it.
#pragma once
#include <fmt/format.h>

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "moe/core/error.h"
#include "moe/core/json_util.h"

namespace moe {

// ---------------------------------------------------------------------------------------------
// Enums

template <class E>
struct EnumSpelling {
  E value;
  const char* name;  // as written in JSON
};

// A config enum E declares its spellings beside it, found by argument-dependent lookup:
//   std::span<const EnumSpelling<E>> spellings(E);
template <class E>
concept ConfigEnum = std::is_enum_v<E> && requires(E e) {
  { spellings(e) } -> std::convertible_to<std::span<const EnumSpelling<E>>>;
};

template <ConfigEnum E>
std::string enum_name(E v) {
  for (const auto& s : spellings(E{}))
    if (s.value == v) return s.name;
  return fmt::format("<{} not in its spelling table>", int(v));
}

template <ConfigEnum E>
std::optional<E> enum_from_name(const std::string& name) {
  for (const auto& s : spellings(E{}))
    if (name == s.name) return s.value;
  return std::nullopt;
}

// "a, b, c": the allowed spellings, in table order.
template <ConfigEnum E>
std::string enum_names() {
  std::string out;
  for (const auto& s : spellings(E{})) {
    if (!out.empty()) out += ", ";
    out += s.name;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Fields

// One declared field of a config struct S. Paths are dotted and relative to the JSON object the
// table reads ("router.kind"); `where` arguments are the full dotted path, for messages.
template <class S>
struct Field {
  std::string path;
  std::string section;  // heading of the README table the field is listed in
  std::string doc;      // one line
  // Type-checks the JSON value and stores it; throws moe::Error naming `where`.
  std::function<void(const nlohmann::json& v, S& s, const std::string& source,
                     const std::string& where)>
      read;
  std::function<nlohmann::json(const S& s)> write;
  // The value as a person reads it in an error or the README: 0.001, true, "gelu", [...].
  std::function<std::string(const S& s)> show;
  // Whether to_json writes the field (unset: always).
  std::function<bool(const S& s)> written;
  // Nothing when the value is allowed, else what is allowed ("[0, 1)", "one of: a, b"). Unset:
  // any value of the type is allowed. Runs once the whole table is read, so it may look at other
  // fields of S (e.g. min_lr <= lr).
  std::function<std::optional<std::string>(const S& s)> violation;
};

// A rule on a value of type T in a struct S: returns nothing when the value is allowed, else
// what is allowed. Rules may look at the rest of the struct; the helpers below look at the value
// only.
template <class T, class S>
using Rule = std::function<std::optional<std::string>(const T& v, const S& s)>;

namespace rule {
template <class T>
auto at_least(T lo) {
  return [lo](const T& v, const auto&) -> std::optional<std::string> {
    if (v >= lo) return std::nullopt;
    return fmt::format(">= {}", lo);
  };
}
template <class T>
auto above(T lo) {
  return [lo](const T& v, const auto&) -> std::optional<std::string> {
    if (v > lo) return std::nullopt;
    return fmt::format("> {}", lo);
  };
}
// lo <= v < hi
template <class T>
auto half_open(T lo, T hi) {
  return [lo, hi](const T& v, const auto&) -> std::optional<std::string> {
    if (v >= lo && v < hi) return std::nullopt;
    return fmt::format("[{}, {})", lo, hi);
  };
}
// lo <= v <= hi
template <class T>
auto between(T lo, T hi) {
  return [lo, hi](const T& v, const auto&) -> std::optional<std::string> {
    if (v >= lo && v <= hi) return std::nullopt;
    return fmt::format("{}..{}", lo, hi);
  };
}
}  // namespace rule

namespace detail {
// The non-template parts of parsing, in config_fields.cpp.
std::string join_path(const std::string& at, const std::string& path);
void require_object(const nlohmann::json& j, const std::string& source, const std::string& where);
// The value at dotted `path` inside j, or null when absent; each object on the way must be an
// object.
const nlohmann::json* find_path(const nlohmann::json& j, const std::string& path,
                                const std::string& source, const std::string& at);
// Rejects a key of j (at any depth) that is no declared path or prefix of one.
void reject_unknown(const nlohmann::json& j, const std::vector<std::string>& paths,
                    const std::string& source, const std::string& at);
[[noreturn]] void wrong_type(const nlohmann::json& v, const char* expected,
                             const std::string& source, const std::string& where);
std::string show_number(double v);
std::string show_number(float v);
std::string quoted(const std::string& s);
// "| `path` | default | doc |\n"; a quoted default (a string) is shown as `code`.
std::string markdown_row(const std::string& path, const std::string& shown_default,
                         const std::string& doc);

template <class T>
void read_value(const nlohmann::json& v, T& out, const std::string& source,
                const std::string& where) {
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) wrong_type(v, "true or false", source, where);
    out = v.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    if (!v.is_number_integer()) wrong_type(v, "an integer", source, where);
    const auto x = v.get<int64_t>();
    const bool in_range = std::is_unsigned_v<T> ? x >= 0
                                                : x >= int64_t(std::numeric_limits<T>::min()) &&
                                                      x <= int64_t(std::numeric_limits<T>::max());
    MOE_CHECK(in_range, "{}: field {}: {} is out of range for this field", source, where, x);
    out = v.get<T>();
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number()) wrong_type(v, "a number", source, where);
    out = v.get<T>();
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!v.is_string()) wrong_type(v, "a string", source, where);
    out = v.get<std::string>();
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    if (!v.is_array()) wrong_type(v, "a list of strings", source, where);
    out.clear();
    for (const auto& e : v) {
      MOE_CHECK(e.is_string(), "{}: field {}: entry {} is not a string", source, where,
                json_excerpt(e));
      out.push_back(e.get<std::string>());
    }
  } else {
    static_assert(ConfigEnum<T>, "a config field is a bool, number, string, list or ConfigEnum");
    if (!v.is_string()) wrong_type(v, "a string", source, where);
    const auto e = enum_from_name<T>(v.get<std::string>());
    MOE_CHECK(e.has_value(), "{}: field {}: got \"{}\", expected one of: {}", source, where,
              v.get<std::string>(), enum_names<T>());
    out = *e;
  }
}

template <class T>
nlohmann::json write_value(const T& v) {
  if constexpr (ConfigEnum<T>)
    return enum_name(v);
  else
    return v;
}

template <class T>
std::string show_value(const T& v) {
  if constexpr (ConfigEnum<T>)
    return quoted(enum_name(v));
  else if constexpr (std::is_same_v<T, std::string>)
    return quoted(v);
  else if constexpr (std::is_floating_point_v<T>)
    return show_number(v);
  else
    return nlohmann::json(v).dump();
}
}  // namespace detail

// The declared fields of a config struct S, in declaration order (which is also the order they
// are read in: a field may depend on one declared before it).
template <class S>
class FieldTable {
 public:
  // Subsequent declarations are listed in the README under this heading.
  FieldTable& section(std::string heading) {
    section_ = std::move(heading);
    return *this;
  }

  // Declares the field `path`, held in `member`.
  template <class T>
  FieldTable& add(std::string path, T S::*member, std::string doc,
                  std::type_identity_t<Rule<T, S>> rule = nullptr) {
    Field<S> f;
    f.path = std::move(path);
    f.section = section_;
    f.doc = std::move(doc);
    f.read = [member](const nlohmann::json& v, S& s, const std::string& source,
                      const std::string& where) {
      detail::read_value(v, s.*member, source, where);
    };
    f.write = [member](const S& s) { return detail::write_value(s.*member); };
    f.show = [member](const S& s) { return detail::show_value(s.*member); };
    if (rule) f.violation = [member, rule](const S& s) { return rule(s.*member, s); };
    fields_.push_back(std::move(f));
    return *this;
  }

  // Declares a field whose reading or writing needs more than a member (e.g. a map of blocks).
  FieldTable& add(Field<S> f) {
    if (f.section.empty()) f.section = section_;
    fields_.push_back(std::move(f));
    return *this;
  }

  // Declares the fields of `sub`, held in `member`, under the JSON path `prefix` ("" = in the
  // same JSON object as this table's own fields). `written` (unset: always) says whether
  // to_json writes them; `heading` lists them under their own README heading, unless `sub`
  // gives them one.
  template <class Sub>
  FieldTable& add_group(const std::string& prefix, Sub S::*member, const FieldTable<Sub>& sub,
                        std::function<bool(const S&)> written = nullptr,
                        const std::string& heading = "") {
    for (const Field<Sub>& g : sub.fields()) {
      Field<S> f;
      f.path = detail::join_path(prefix, g.path);
      f.section = !g.section.empty() ? g.section : !heading.empty() ? heading : section_;
      f.doc = g.doc;
      f.read = [member, r = g.read](const nlohmann::json& v, S& s, const std::string& source,
                                    const std::string& where) { r(v, s.*member, source, where); };
      f.write = [member, w = g.write](const S& s) { return w(s.*member); };
      f.show = [member, sh = g.show](const S& s) { return sh(s.*member); };
      if (g.written || written)
        f.written = [member, gw = g.written, written](const S& s) {
          return (!written || written(s)) && (!gw || gw(s.*member));
        };
      if (g.violation) f.violation = [member, v = g.violation](const S& s) { return v(s.*member); };
      fields_.push_back(std::move(f));
    }
    return *this;
  }

  // The most recent declaration, to wrap its reader (e.g. a kind that resets the struct).
  Field<S>& last() { return fields_.back(); }
  std::span<const Field<S>> fields() const { return fields_; }

  // Reads the JSON object j (found at dotted path `at`, "" for the root) into s, over the
  // values s already holds: absent fields keep them. Then rejects unknown fields and checks
  // every rule.
  void parse(const nlohmann::json& j, S& s, const std::string& source,
             const std::string& at) const {
    detail::require_object(j, source, at);
    std::vector<std::string> paths;
    for (const Field<S>& f : fields_) {
      paths.push_back(f.path);
      if (const nlohmann::json* v = detail::find_path(j, f.path, source, at))
        f.read(*v, s, source, detail::join_path(at, f.path));
    }
    detail::reject_unknown(j, paths, source, at);
    check(s, source, at);
  }

  // Checks every declared rule on s; the message names `source` and the field's full path.
  void check(const S& s, const std::string& source, const std::string& at) const {
    for (const Field<S>& f : fields_) {
      if (!f.violation) continue;
      const std::optional<std::string> allowed = f.violation(s);
      MOE_CHECK(!allowed, "{}: field {}: got {}, expected {}", source,
                detail::join_path(at, f.path), f.show(s), *allowed);
    }
  }

  nlohmann::json to_json(const S& s) const {
    nlohmann::json j = nlohmann::json::object();
    for (const Field<S>& f : fields_) {
      if (f.written && !f.written(s)) continue;
      nlohmann::json* node = &j;
      std::size_t start = 0;
      for (std::size_t dot; (dot = f.path.find('.', start)) != std::string::npos; start = dot + 1)
        node = &(*node)[f.path.substr(start, dot - start)];
      (*node)[f.path.substr(start)] = f.write(s);
    }
    return j;
  }

  // The README's tables: per heading (in order of first declaration), one row per field with
  // its full path, default and doc line.
  std::string markdown() const {
    const S defaults{};
    std::vector<std::string> headings;
    for (const Field<S>& f : fields_)
      if (std::find(headings.begin(), headings.end(), f.section) == headings.end())
        headings.push_back(f.section);
    std::string out;
    for (const std::string& heading : headings) {
      out += fmt::format("{}{}\n\n| field | default | meaning |\n|---|---|---|\n",
                         out.empty() ? "" : "\n", heading);
      for (const Field<S>& f : fields_) {
        if (f.section != heading) continue;
        out += detail::markdown_row(f.path, f.show(defaults), f.doc);
      }
    }
    return out;
  }

 private:
  std::vector<Field<S>> fields_;
  std::string section_;
};

}  // namespace moe
