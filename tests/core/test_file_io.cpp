// Atomic writes: a writer that fails leaves the old file untouched and no temporary behind;
// a successful one replaces the file whole.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include "../error_util.h"
#include "../temp_dir.h"
#include "moe/core/file_io.h"

namespace moe {

namespace fs = std::filesystem;

class FileIo : public ::testing::Test {
 protected:
  std::string path(const std::string& name) const { return dir_.file(name); }
  testing::TempDir dir_;
};

TEST_F(FileIo, StaleTemporariesOfDeadProcessesAreRemoved) {
  // A child that has exited (and been reaped) stands for a writer killed mid-write.
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  const std::string dead = path("last.safetensors.tmp." + std::to_string(child));
  const std::string live = path("last.safetensors.tmp." + std::to_string(::getpid()));
  const std::string other = path("notes.tmp.draft");
  for (const std::string& p : {dead, live, other}) write_file_atomic(p, "x");
  EXPECT_EQ(remove_stale_temp_files(dir_.path), 1);
  EXPECT_FALSE(file_exists(dead));
  EXPECT_TRUE(file_exists(live));
  EXPECT_TRUE(file_exists(other));
  EXPECT_EQ(remove_stale_temp_files(dir_.path + "/missing"), 0);
}

TEST_F(FileIo, WriteReplacesWholeAndReadReturnsIt) {
  const std::string p = path("a.txt");
  write_file_atomic(p, std::string("first version\n"));
  write_file_atomic(p, std::string("second\0with a NUL", 17));
  EXPECT_EQ(read_file(p), std::string("second\0with a NUL", 17));
  EXPECT_TRUE(file_exists(p));
}

TEST_F(FileIo, FailedWriterLeavesTheOldFileAndNoTemporary) {
  const std::string p = path("keep.txt");
  write_file_atomic(p, std::string("old contents"));
  EXPECT_THROW(write_file_atomic(p,
                                 [](std::FILE* f) {
                                   std::fputs("half of the new", f);
                                   MOE_FAIL("simulated failure mid-write");
                                 }),
               Error);
  EXPECT_EQ(read_file(p), "old contents");
  int files = 0;
  for (auto& e : fs::directory_iterator(dir_.path)) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 1) << "a temporary file was left behind";
}

TEST_F(FileIo, AppendLineKeepsEveryLine) {
  const std::string p = path("log.jsonl");
  append_line_atomic(p, "{\"a\": 1}");
  append_line_atomic(p, "{\"b\": 2}");
  EXPECT_EQ(read_file(p), "{\"a\": 1}\n{\"b\": 2}\n");
}

TEST_F(FileIo, ErrorsNameThePath) {
  testing::expect_error([&] { read_file(path("missing.txt")); }, {"missing.txt", "cannot open"});
  testing::expect_error([&] { write_file_atomic(path("no/such/dir/x"), std::string("x")); },
                        {"no/such/dir/x", "cannot open"});
}

}  // namespace moe
