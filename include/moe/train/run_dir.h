// A run directory (train.out_dir) holds one run: its checkpoints and metrics.jsonl. A new run
// must not silently replace an earlier one (checkpoints overwritten, metrics.jsonl cut from 61
// lines to 3): it refuses a directory that already holds a run unless told to overwrite it.
#pragma once
#include <string>
#include <vector>

namespace moe {

// The files in dir that make it a run: checkpoints (*.safetensors, the directory's top level
// only) and metrics.jsonl, sorted by name; empty when dir does not exist.
std::vector<std::string> run_files_in(const std::string& dir);

// Before a fresh (not resumed) run writes anything into dir. Without `overwrite`, a moe::Error
// naming dir, the files found (with metrics.jsonl's line count) and the ways out (--overwrite,
// --resume, another train.out_dir) when dir holds a run. With it, those files are removed (so an
// interrupted new run cannot leave an old final.safetensors looking like its own); nothing else in
// dir is touched, nor any file in `keep` (a checkpoint the new run starts from, --init-from or
// --upcycle-from, may lie in dir).
void claim_run_dir(const std::string& dir, bool overwrite,
                   const std::vector<std::string>& keep = {});

}  // namespace moe
