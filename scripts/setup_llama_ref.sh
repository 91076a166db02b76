#!/usr/bin/env bash
# Fetches the llama.cpp reference used by the tests and benchmarks (never by the `moe` binary):
# npm's node-llama-cpp@3.21.1 carries the llama.cpp source as a git bundle (headers, gguf-py,
# src/models/*.cpp) and @node-llama-cpp/linux-x64@3.21.1 the prebuilt libllama/libggml with
# their CPU backends. Both are `npm pack`ed (no node_modules) into DEST and unpacked once; a
# stamp file makes re-runs free. Usage: setup_llama_ref.sh DEST
set -euo pipefail
DEST=${1:?usage: setup_llama_ref.sh DEST}
VERSION=3.21.1
STAMP="$DEST/.stamp-$VERSION"
[ -f "$STAMP" ] && exit 0
command -v npm >/dev/null || { echo "setup_llama_ref: npm is needed (scripts/setup.sh installs it)" >&2; exit 1; }
command -v git >/dev/null || { echo "setup_llama_ref: git is needed" >&2; exit 1; }
rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp/pack"
echo "moe.cpp: fetching the llama.cpp reference (npm node-llama-cpp@$VERSION)"
(cd "$DEST.tmp/pack" && npm pack --silent "node-llama-cpp@$VERSION" "@node-llama-cpp/linux-x64@$VERSION" >/dev/null)
mkdir -p "$DEST.tmp/src-pkg" "$DEST.tmp/bin-pkg"
tar xzf "$DEST.tmp/pack/node-llama-cpp-$VERSION.tgz" -C "$DEST.tmp/src-pkg"
tar xzf "$DEST.tmp/pack/node-llama-cpp-linux-x64-$VERSION.tgz" -C "$DEST.tmp/bin-pkg"
git clone -q "$DEST.tmp/src-pkg/package/llama/gitRelease.bundle" "$DEST.tmp/llama.cpp" 2>/dev/null
mv "$DEST.tmp/bin-pkg/package/bins/linux-x64" "$DEST.tmp/lib"
# The prebuilt libraries name their sonames without the version suffix; give the linker both.
(cd "$DEST.tmp/lib" && ln -sf libllama.v0.4.0.so libllama.so && ln -sf libggml.v0.4.0.so libggml.so)
rm -rf "$DEST.tmp/pack" "$DEST.tmp/src-pkg" "$DEST.tmp/bin-pkg" "$DEST.tmp/llama.cpp/.git"
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
touch "$STAMP"
