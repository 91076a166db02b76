# Thin wrapper over CMake. `make run` and `make test` do all the set-up on a fresh Debian 12.
BUILD ?= build
JOBS ?= $(shell nproc)
CONFIG ?= configs/default.json

.PHONY: all setup configure build ref run test bench format clean data study test-sanitize fuzz

all: build

setup:
	@bash scripts/setup.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release

configure: setup $(BUILD)/CMakeCache.txt

build: configure
	cmake --build $(BUILD) -j $(JOBS)

data: build
	@# Fetched again when the manifest predates its per-document groups and sizes (the study's
	@# expert-specialisation table needs them; the split files come out byte-identical).
	@test -f data/brown/train.txt && grep -q document_groups data/brown/manifest.json || \
	  $(BUILD)/moe data fetch brown --out data/brown

run: data
	bash scripts/run_default.sh $(CONFIG)

# The tests and benchmarks compare against llama.cpp; its reference harness is built (and npm
# fetched, once) only here, never for `make run`.
ref: build
	cmake --build $(BUILD) --target llama_ref

test: ref data
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

bench: data ref
	cmake --build $(BUILD) --target onednn_matmul onednn_gemm_bf16 libxsmm_gemm_bf16
	bash bench/run_bench.sh

# The miniature reproduction of the papers' claims (docs/RESULTS.md), about 2 hours on 2 cores.
study: data
	bash scripts/study.sh

# The unit tests (and the CLI tests that drive `moe`) built with AddressSanitizer and
# UndefinedBehaviorSanitizer by g++ in $(ASAN_BUILD)/ (docs/RELIABILITY.md). .ci/run runs it after
# `make test`. -O1 -g keeps it fast enough for CI with usable reports; -march=native and
# -ffp-contract=off as in Release, so the same kernels run.
ASAN_BUILD ?= build-asan
ASAN_FLAGS = -O1 -g -fno-omit-frame-pointer -march=native -ffp-contract=off \
             -fsanitize=address,undefined -fno-sanitize-recover=undefined
test-sanitize: setup
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Sanitize "-DCMAKE_CXX_FLAGS_SANITIZE=$(ASAN_FLAGS)" \
	  -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address,undefined
	cmake --build $(ASAN_BUILD) -j $(JOBS) --target moe moe_tests
	bash scripts/test_sanitize.sh $(ASAN_BUILD)

# libFuzzer targets (fuzz/fuzz_*.cpp) built by clang with ASan+UBSan in $(FUZZ_BUILD)/ (a
# separate CMake project, fuzz/CMakeLists.txt), each run for FUZZ_SECONDS from the seed corpora;
# fails on any crash, leak, UB report, out-of-memory or timeout (scripts/fuzz.sh).
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
fuzz:
	@bash scripts/setup.sh fuzz
	cmake -S fuzz -B $(FUZZ_BUILD) -DCMAKE_CXX_COMPILER=clang++
	cmake --build $(FUZZ_BUILD) -j $(JOBS)
	bash scripts/fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

format:
	clang-format -i $$(git ls-files '*.cpp' '*.h')

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
