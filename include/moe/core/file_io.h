// Whole-file reads and atomic writes. A write goes to "<path>.tmp.<pid>", is fsynced, then
// renamed over the target (and the directory fsynced), so a crash leaves either the old file or
// the new one, never half of one.
#pragma once
#include <cstdio>
#include <functional>
#include <string>

namespace moe {

std::string read_file(const std::string& path);
// `write` receives an open FILE*; it should fwrite everything. Errors throw moe::Error and leave
// the target untouched.
void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& write);
void write_file_atomic(const std::string& path, const std::string& contents);
// Appends one line (a '\n' is added) by rewriting the file atomically: a crash leaves the old
// lines or all of them, never half a line. For small logs of finished runs (results.jsonl).
void append_line_atomic(const std::string& path, const std::string& line);
bool file_exists(const std::string& path);
// Removes dir's "<name>.tmp.<pid>" files (write_file_atomic's temporaries) whose process is
// gone: what a kill during a write leaves behind. Files of live processes stay. Returns how
// many it removed; a missing dir removes none.
int remove_stale_temp_files(const std::string& dir);
void make_dirs(const std::string& path);

}  // namespace moe
