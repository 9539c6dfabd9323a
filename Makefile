# The two commands of README.md. Everything else is a building block of these.
#   make demo   install what is missing, build, start the local cluster, ask one RAG question
#   make test   install what is missing, build, run the whole test suite (what CI runs)
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: demo test deps build bench unit format layering thread-safety fuzz-smoke clean

deps:
	tools/setup-deps

build: deps
	cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	tools/demo --build $(BUILD)

# Benchmark programs (tools/bench -> $(BUILD)/bin/*_bench); docs/BENCHMARKS.md says how to run them.
bench: build
	cmake --build $(BUILD) -j $(JOBS) --target bench

# ctest runs every unit, service and e2e test; benchmarks are separate programs (tools/bench).
unit: build
	cd $(BUILD) && ctest --output-on-failure --timeout 600 -j $(JOBS)

format:
	tools/check-format

# Include rules between kernels/, index/ and the services (reads #include lines only).
layering:
	tools/check-layering

# clang -Wthread-safety over the units that use annotated locks (compile_commands.json of $(BUILD)).
thread-safety: build
	JOBS=$(JOBS) tools/check-thread-safety $(BUILD)

fuzz-smoke: deps
	tools/fuzz-smoke

test: deps format layering build thread-safety unit fuzz-smoke
	@echo "make test: all green"

clean:
	rm -rf $(BUILD) build-fuzz build-fuzz.configure.log
