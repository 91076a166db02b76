# Thin wrapper over CMake. `make run` and `make test` do all the set-up on a fresh Debian 12.
BUILD ?= build
JOBS ?= $(shell nproc)
CONFIG ?= configs/default.json

.PHONY: all setup configure build ref run test bench format clean data study

all: build

setup:
	@bash scripts/setup.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release

configure: setup $(BUILD)/CMakeCache.txt

build: configure
	cmake --build $(BUILD) -j $(JOBS)

data: build
	@test -f data/brown/train.txt || $(BUILD)/moe data fetch brown --out data/brown

run: data
	bash scripts/run_default.sh $(CONFIG)

# The tests and benchmarks compare against llama.cpp; its reference harness is built (and npm
# fetched, once) only here, never for `make run`.
ref: build
	cmake --build $(BUILD) --target llama_ref

test: ref data
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

bench: data ref
	bash bench/run_bench.sh

# The miniature reproduction of the papers' claims (docs/RESULTS.md), about 2 hours on 2 cores.
study: data
	bash scripts/study.sh

format:
	clang-format -i $$(git ls-files '*.cpp' '*.h')

clean:
	rm -rf $(BUILD)
