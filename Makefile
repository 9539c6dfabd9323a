# The two commands of README.md. Everything else is a building block of these.
#   make demo   install what is missing, build, start the local cluster, ask one RAG question
#   make test   install what is missing, build, run the whole test suite (what CI runs)
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: demo test deps build bench unit format layering thread-safety unit-and-thread-safety fuzz-smoke \
        clean

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

# What `make test` runs after the build: ctest, with the thread-safety pass beside it at nice 10.
# The tests leave ~20% of the cores idle (they wait on the servers they start) and the pass takes
# ~110 CPU-s, so it mostly fills that idle time instead of adding a minute of its own; at nice 10
# it takes little from the tests. Its report is printed after theirs; either failing fails this.
unit-and-thread-safety: build
	@JOBS=$(JOBS) nice -n 10 tools/check-thread-safety $(BUILD) >$(BUILD)/thread-safety.log 2>&1 & \
	  ts_pid=$$!; \
	  (cd $(BUILD) && ctest --output-on-failure --timeout 600 -j $(JOBS)); unit_rc=$$?; \
	  wait $$ts_pid; ts_rc=$$?; \
	  cat $(BUILD)/thread-safety.log; \
	  [ $$unit_rc -eq 0 ] && [ $$ts_rc -eq 0 ]

test: deps format layering build unit-and-thread-safety fuzz-smoke
	@echo "make test: all green"

clean:
	rm -rf $(BUILD) build-fuzz build-fuzz.configure.log
