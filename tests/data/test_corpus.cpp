// Corpus preparation: Brown tag stripping on hand-written Form C snippets, the split rule, and
// the split writers on generated files. No network: the npm download itself (fetch_brown) is
// not exercised here; build_brown, which it ends in, is, on a fake package directory.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "../error_util.h"
#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/data/corpus.h"
#include "moe/data/token_data.h"

namespace moe::data {
namespace {

using moe::testing::error_of;
using moe::testing::expect_error;
namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class ScratchDir {
 public:
  ScratchDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            fmt::format("moe-test-{}-{}-{}", info->test_suite_name(), info->name(), ::getpid());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~ScratchDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

std::map<std::string, std::string> read_splits(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (Split s : {Split::kTrain, Split::kVal, Split::kTest}) {
    out[split_name(s)] = read_file(split_path(dir, s));
  }
  return out;
}

nlohmann::json read_manifest(const std::string& dir) {
  return nlohmann::json::parse(read_file(manifest_path(dir)));
}

TEST(DataStripBrownTags, SentenceInFormC) {
  const std::string in =
      "\n\n\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr an/at "
      "investigation/nn of/in Atlanta's/np$ recent/jj primary/nn election/nn produced/vbd ``/`` "
      "no/at evidence/nn ''/'' that/cs any/dti irregularities/nns took/vbd place/nn ./.\n";
  EXPECT_EQ(strip_brown_tags(in),
            "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary "
            "election produced \" no evidence \" that any irregularities took place .\n\n");
}

TEST(DataStripBrownTags, TagIsAfterLastSlash) {
  EXPECT_EQ(strip_brown_tags("add/vb 1/2/cd cup/nn and/or/cc 3-1/2/cd mg/l/hr/nn ./.\n"),
            "add 1/2 cup and/or 3-1/2 mg/l/hr .\n\n");
  // The word "/" itself ("per"), and a word ending in '/'.
  EXPECT_EQ(strip_brown_tags("miles //in hour/nn AAb//nn\n"), "miles / hour AAb/\n\n");
  // Possessive tags contain '$', inch marks stay inside words.
  EXPECT_EQ(strip_brown_tags("Georgia's/np$ 1/4''/nn pipe/nn\n"), "Georgia's 1/4'' pipe\n\n");
}

TEST(DataStripBrownTags, QuoteTokens) {
  EXPECT_EQ(strip_brown_tags("``/`` Yes/rb ''/'' ,/, he/pps said/vbd ;/. '/' tis/nn\n"),
            "\" Yes \" , he said ; ' tis\n\n");
}

TEST(DataStripBrownTags, TokenWithoutSlashIsKept) {
  EXPECT_EQ(strip_brown_tags("odd token/nn here\n"), "odd token here\n\n");
}

TEST(DataStripBrownTags, ParagraphsAndWhitespace) {
  // Sentences of one paragraph are consecutive lines; paragraphs are separated by one or more
  // blank (or whitespace-only) lines; runs of spaces/tabs inside a line collapse.
  const std::string in =
      "\n\n\tThe/at City/nn-tl ,/, the/at jury/nn said/vbd ./. \n"
      "It/pps urged/vbd   action/nn ./.\n"
      "\n\n"
      "\tImplementation/nn\tfollowed/vbd ./.\n"
      "\t\n"
      "Merger/nn-hl proposed/vbn-hl \n"
      "However/wrb ,/, no/at ./.\n"
      "\n";
  EXPECT_EQ(strip_brown_tags(in),
            "The City , the jury said . It urged action .\n"
            "Implementation followed .\n"
            "Merger proposed However , no .\n"
            "\n");
}

TEST(DataStripBrownTags, EmptyInputGivesEmptyDocument) {
  EXPECT_EQ(strip_brown_tags(""), "");
  EXPECT_EQ(strip_brown_tags("\n \n\t\n"), "");
}

TEST(DataSplit, RuleForIndex) {
  EXPECT_EQ(split_for_index(0), Split::kTest);
  EXPECT_EQ(split_for_index(1), Split::kVal);
  for (std::size_t k = 2; k < 10; ++k) EXPECT_EQ(split_for_index(k), Split::kTrain) << k;
  EXPECT_EQ(split_for_index(10), Split::kTest);
  EXPECT_EQ(split_for_index(21), Split::kVal);
  EXPECT_EQ(split_for_index(39), Split::kTrain);
  int counts[3] = {0, 0, 0};
  for (std::size_t k = 0; k < 100; ++k) ++counts[static_cast<int>(split_for_index(k))];
  EXPECT_EQ(counts[static_cast<int>(Split::kTrain)], 80);
  EXPECT_EQ(counts[static_cast<int>(Split::kVal)], 10);
  EXPECT_EQ(counts[static_cast<int>(Split::kTest)], 10);
  EXPECT_STREQ(split_name(Split::kVal), "val");
}

TEST(DataWriteSplits, RanksWithinEachGroup) {
  ScratchDir dir;
  std::vector<Document> docs;
  // Group "b" given before "a": groups are sorted, order within a group is kept.
  for (int k = 0; k < 4; ++k)
    docs.push_back({"b", fmt::format("b{}", k), fmt::format("B{}\n\n", k)});
  for (int k = 0; k < 12; ++k)
    docs.push_back({"a", fmt::format("a{:02}", k), fmt::format("A{}\n\n", k)});
  write_splits(docs, "unit test", dir.file("out"));
  const auto text = read_splits(dir.file("out"));
  EXPECT_EQ(text.at("test"), "A0\n\nA10\n\nB0\n\n");
  EXPECT_EQ(text.at("val"), "A1\n\nA11\n\nB1\n\n");
  EXPECT_EQ(text.at("train"), "A2\n\nA3\n\nA4\n\nA5\n\nA6\n\nA7\n\nA8\n\nA9\n\nB2\n\nB3\n\n");
  const auto m = read_manifest(dir.file("out"));
  EXPECT_EQ(m["source"], "unit test");
  EXPECT_EQ(m["splits"]["train"]["documents"], 10);
  EXPECT_EQ(m["splits"]["train"]["bytes"], text.at("train").size());
  EXPECT_EQ(m["splits"]["val"]["names"], (std::vector<std::string>{"a01", "a11", "b1"}));
  EXPECT_EQ(m["splits"]["test"]["groups"], (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(brown_present(dir.file("out")));
  EXPECT_FALSE(brown_present(dir.file("nothing_here")));
}

TEST(DataWriteSplits, TheManifestTracesEveryByteToItsDocumentsGroup) {
  ScratchDir dir;
  std::vector<Document> docs;
  for (int k = 0; k < 4; ++k)
    docs.push_back({"b", fmt::format("b{}", k), fmt::format("Bee {}\n\n", k)});
  for (int k = 0; k < 12; ++k)
    docs.push_back({"a", fmt::format("a{:02}", k), fmt::format("A{}\n\n", k)});
  write_splits(docs, "unit test", dir.file("out"));
  // val = a01, a11, b1: "A1\n\n" (4 bytes), "A11\n\n" (5), "Bee 1\n\n" (7).
  const SplitDocuments v = read_split_documents(dir.file("out"), Split::kVal);
  EXPECT_EQ(v.groups, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(v.group_of, (std::vector<int32_t>{0, 0, 1}));
  EXPECT_EQ(v.bytes, (std::vector<uint64_t>{4, 5, 7}));
  // Per token: the group of the document holding its first byte (a byte tokenizer here).
  auto tok = make_byte_tokenizer();
  const TokenStream s = tokenize_file(*tok, split_path(dir.file("out"), Split::kVal));
  const std::vector<int32_t> g = token_groups(s, v.bytes, v.group_of);
  EXPECT_EQ(g, (std::vector<int32_t>{0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1}));
  // Tokens of several bytes and of none: the first byte decides; an empty token takes the next
  // byte's document.
  TokenStream t;
  t.ids = {0, 1, 2, 3, 4};
  t.bytes_per_token = {3, 0, 2, 4, 7};
  t.total_bytes = 16;
  EXPECT_EQ(token_groups(t, v.bytes, v.group_of), (std::vector<int32_t>{0, 0, 0, 0, 1}));
  // A split file and a manifest that do not belong together.
  t.total_bytes = 17;
  t.bytes_per_token.back() = 8;
  expect_error([&] { token_groups(t, v.bytes, v.group_of); }, {"16 bytes", "17"});
  // A manifest written before the fields existed names itself and the fix.
  auto m = read_manifest(dir.file("out"));
  m["splits"]["val"].erase("document_bytes");
  write_file_atomic(manifest_path(dir.file("out")), m.dump());
  expect_error([&] { read_split_documents(dir.file("out"), Split::kVal); },
               {manifest_path(dir.file("out")), "splits.val", "document_bytes", "moe data fetch"});
}

TEST(DataWriteSplits, RejectsDuplicatesAndEmptySplits) {
  ScratchDir dir;
  expect_error(
      [&] {
        write_splits({{"a", "x", "1\n\n"}, {"a", "x", "2\n\n"}}, "t", dir.file("o"));
      },
      {"x", "twice"});
  expect_error(
      [&] {
        write_splits({{"a", "x", "1\n\n"}, {"a", "y", "2\n\n"}}, "t", dir.file("o"));
      },
      {"train split would be empty"});
  expect_error(
      [&] {
        write_splits({{"a", "x", "no blank line\n"}}, "t", dir.file("o"));
      },
      {"x", "blank line"});
  EXPECT_FALSE(fs::exists(dir.file("o/manifest.json")));
}

// The genre sizes of the real corpus (ca01..ca44, cb01..cb27, …, cr01..cr09: 500 files).
const std::map<char, int> kBrownGenres = {{'a', 44}, {'b', 27}, {'c', 17}, {'d', 17}, {'e', 36},
                                          {'f', 48}, {'g', 75}, {'h', 30}, {'j', 80}, {'k', 29},
                                          {'l', 24}, {'m', 6},  {'n', 29}, {'p', 29}, {'r', 9}};

void write_fake_brown(const std::string& dir, int skip_last = 0) {
  fs::create_directories(dir);
  write_file_atomic(dir + "/README", "BROWN CORPUS\n");
  write_file_atomic(dir + "/CONTENTS", "ca01 A01 ...\n");
  write_file_atomic(dir + "/cats.txt", "ca01 news\n");
  int n = 0;
  for (const auto& [genre, count] : kBrownGenres) {
    for (int i = 1; i <= count; ++i) {
      if (++n > 500 - skip_last) return;
      const std::string name = fmt::format("c{}{:02}", genre, i);
      // Plain writes: 500 fsyncs would make this test slow for no benefit.
      std::ofstream(dir + "/" + name)
          << fmt::format("\n\n\tDoc/nn {}/np ./.\n\n\n\tEnd/nn ./.\n", name);
    }
  }
}

TEST(DataBuildBrown, EveryGenreInEverySplit) {
  ScratchDir dir;
  write_fake_brown(dir.file("package"));
  build_brown(dir.file("package"), dir.file("out"));
  const auto m = read_manifest(dir.file("out"));
  // The same numbers as the real corpus (docs/DATA.md).
  EXPECT_EQ(m["splits"]["train"]["documents"], 392);
  EXPECT_EQ(m["splits"]["val"]["documents"], 54);
  EXPECT_EQ(m["splits"]["test"]["documents"], 54);
  for (const char* s : {"train", "val", "test"})
    EXPECT_EQ(m["splits"][s]["groups"].size(), 15u) << s;
  const auto text = read_splits(dir.file("out"));
  EXPECT_EQ(text.at("test").substr(0, 28), "Doc ca01 .\nEnd .\n\nDoc ca11 .");
  EXPECT_NE(text.at("val").find("Doc cm02 .\n"), std::string::npos);
  EXPECT_EQ(text.at("train").find("README"), std::string::npos);
}

TEST(DataBuildBrown, WrongFileCountIsAnError) {
  ScratchDir dir;
  write_fake_brown(dir.file("package"), /*skip_last=*/1);
  expect_error([&] { build_brown(dir.file("package"), dir.file("out")); },
               {dir.file("package"), "found 499", "expected 500"});
  expect_error([&] { build_brown(dir.file("missing"), dir.file("out")); }, {"not a directory"});
}

TEST(DataPrepareText, OneDocumentPerFile) {
  ScratchDir dir;
  std::vector<std::string> inputs;
  std::size_t total = 0;
  for (int i = 11; i >= 0; --i) {  // given in reverse: ranking is by sorted path
    const std::string path = dir.file(fmt::format("in/doc{:02}.txt", i));
    fs::create_directories(dir.file("in"));
    // Inner blank lines and indentation are kept; CRLF becomes LF; leading blank lines and
    // trailing whitespace are dropped.
    const std::string body = fmt::format("marker-{:02} first line\n\n  indented ünïcode\n", i);
    write_file_atomic(
        path, i == 3 ? "\n\r\nmarker-03 first line\r\n\r\n  indented ünïcode  \r\n\n" : body);
    total += fmt::format("marker-{:02} first line\n\n  indented ünïcode", i).size() + 2;
    inputs.push_back(path);
  }
  prepare_text(inputs, dir.file("out"));
  const auto text = read_splits(dir.file("out"));
  EXPECT_EQ(text.at("train").size() + text.at("val").size() + text.at("test").size(), total);
  for (int i = 0; i < 12; ++i) {
    const std::string marker = fmt::format("marker-{:02}", i);
    const char* want = i % 10 == 0 ? "test" : i % 10 == 1 ? "val" : "train";
    for (const auto& [split, t] : text) {
      EXPECT_EQ(t.find(marker) != std::string::npos, split == want) << marker << " in " << split;
    }
  }
  EXPECT_EQ(text.at("val"),
            "marker-01 first line\n\n  indented ünïcode\n\n"
            "marker-11 first line\n\n  indented ünïcode\n\n");
  EXPECT_NE(text.at("train").find("marker-03 first line\n\n  indented ünïcode\n\n"),
            std::string::npos);
  const auto m = read_manifest(dir.file("out"));
  EXPECT_EQ(m["splits"]["test"]["names"],
            (std::vector<std::string>{dir.file("in/doc00.txt"), dir.file("in/doc10.txt")}));
}

TEST(DataPrepareText, FewFilesAreSplitByParagraph) {
  ScratchDir dir;
  std::string a, b;
  for (int p = 0; p < 15; ++p) a += fmt::format("para-{:02} line one\nline two\n\n\n", p);
  for (int p = 15; p < 25; ++p) b += fmt::format("para-{:02} only line\n\t \n", p);
  write_file_atomic(dir.file("b.txt"), b);
  write_file_atomic(dir.file("a.txt"), a);
  prepare_text({dir.file("b.txt"), dir.file("a.txt")}, dir.file("out"));
  const auto text = read_splits(dir.file("out"));
  EXPECT_EQ(text.at("test"),
            "para-00 line one\nline two\n\npara-10 line one\nline two\n\npara-20 only line\n\n");
  EXPECT_EQ(text.at("val"),
            "para-01 line one\nline two\n\npara-11 line one\nline two\n\npara-21 only line\n\n");
  const auto m = read_manifest(dir.file("out"));
  EXPECT_EQ(m["splits"]["train"]["documents"], 19);
  std::size_t total = 0;
  for (const auto& [split, t] : text) total += t.size();
  EXPECT_EQ(total, 15 * std::string("para-00 line one\nline two\n\n").size() +
                       10 * std::string("para-15 only line\n\n").size());
}

TEST(DataPrepareText, BadInputsNameTheFile) {
  ScratchDir dir;
  write_file_atomic(dir.file("good.txt"), "one\n\ntwo\n\nthree\n\nfour\n");
  write_file_atomic(dir.file("empty.txt"), " \n\t\n");
  write_file_atomic(dir.file("latin1.txt"), "caf\xe9\n");
  write_file_atomic(dir.file("short.txt"), "one\n\ntwo\n");
  expect_error(
      [&] {
        prepare_text({dir.file("good.txt"), dir.file("nope.txt")}, dir.file("o"));
      },
      {dir.file("nope.txt"), "no such file"});
  expect_error([&] { prepare_text({dir.file("empty.txt")}, dir.file("o")); },
               {dir.file("empty.txt"), "empty"});
  expect_error([&] { prepare_text({dir.file("latin1.txt")}, dir.file("o")); },
               {dir.file("latin1.txt"), "UTF-8", "offset 3"});
  expect_error([&] { prepare_text({dir.file("short.txt")}, dir.file("o")); },
               {dir.file("short.txt"), "2 paragraph"});
  expect_error(
      [&] {
        prepare_text({dir.file("good.txt"), dir.file("good.txt")}, dir.file("o"));
      },
      {"given twice"});
  expect_error([&] { prepare_text({}, dir.file("o")); }, {"no input"});
  EXPECT_FALSE(fs::exists(dir.file("o")));
  prepare_text({dir.file("good.txt")}, dir.file("o"));  // 4 paragraphs are enough
  EXPECT_EQ(read_file(dir.file("o/train.txt")), "three\n\nfour\n\n");
}

}  // namespace
}  // namespace moe::data
