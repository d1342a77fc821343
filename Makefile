# clipmpi: `make run` and `make test` do all set-up themselves.
SHELL      := /bin/bash
GO         ?= go
TAGS       ?= mpi openblas dnnl
GOTAGS     := -tags '$(TAGS)'
BIN        := $(CURDIR)/bin
MPIRUN     := $(CURDIR)/scripts/mpirun.sh
# Test suites launch with MPIRUN_TEST: every mpirun bounded by TEST_TIMEOUT
# seconds (CLIPMPI_TIMEOUT if set, else 900), so that a hang fails the suite.
# User runs (make run, bench-loss) use MPIRUN: no time limit.
TEST_TIMEOUT ?= $(or $(CLIPMPI_TIMEOUT),900)
MPIRUN_TEST := CLIPMPI_TIMEOUT=$(TEST_TIMEOUT) $(MPIRUN)
NP         ?= 2
# MPI world sizes the communicator conformance suite runs at.
MPI_NPS    ?= 1 2 3 4
STATICCHECK_VERSION := v0.8.2
# The OpenCLIP golden cases: the repository's own copy, in the format of
# test/testdata/golden/README.md.
export CLIPMPI_GOLDEN ?= $(CURDIR)/test/testdata/golden

.PHONY: all deps build run test fuzz unit test-mpi test-golden race vet lint fmt-check fmt bench bench-loss clean

all: build

deps:
	@scripts/deps.sh

build: deps
	$(GO) build $(GOTAGS) ./...
	$(GO) build $(GOTAGS) -o $(BIN)/check ./examples/check
	$(GO) build $(GOTAGS) -o $(BIN)/bench ./examples/bench

# The main job: train projection heads on NP ranks on the built-in synthetic
# set (local_loss + gather_with_grad, the algorithm Auto picks); summary, metrics and plot in run/.
# PRECISION=amp_bf16: the loss's GEMMs in bf16 (OpenCLIP's --precision).
PRECISION ?= fp32
# SUMS_BF16=true (bench-loss, bench-net): with amp_bf16, the ring methods'
# gradient sums travel in bf16 too.
SUMS_BF16 ?= false
run: build $(BIN)/train
	$(MPIRUN) $(NP) $(BIN)/train --precision $(PRECISION) --logs run --summary run/summary.json

$(BIN)/train: deps FORCE
	$(GO) build $(GOTAGS) -o $@ ./examples/train

# Everything a contributor keeps green: `make test` runs every suite in
# SUITES in order (scripts/runtests.sh), keeps going after a failure and
# ends with "make test: N passed, M failed, K skipped"; it fails if any
# suite failed, and under CI=true a skipped suite counts as failed.
# Adding a suite is one line here:
#     SUITES += test-foo
# test-foo is a make target that exits non-zero on failure (its mpiruns go
# through $(MPIRUN_TEST), which bounds them); one that cannot run here
# prints why with `scripts/skip.sh REASON` and exits 0.
SUITES := fmt-check vet lint
SUITES += unit
SUITES += race
SUITES += test-mpi
SUITES += test-golden
SUITES += test-train
SUITES += test-faults
SUITES += test-capi
SUITES += test-python
SUITES += test-slurm
SUITES += test-multihost
SUITES += test-arm64

test: deps
	@MAKE='$(MAKE)' scripts/runtests.sh $(SUITES)

# Unit and in-process tests, pure Go (no tags: what a bare machine builds;
# without cgo too) and with OpenBLAS and MPI compiled in.
unit: deps
	CGO_ENABLED=0 $(GO) build ./...
	$(GO) test ./...
	$(GO) test $(GOTAGS) ./...

race: deps
	$(GO) test -race $(GOTAGS) ./mpi/... ./loss/... ./clip/... ./test/... ./capi/...

$(BIN)/mpi.test: deps FORCE
	$(GO) test -c $(GOTAGS) -o $@ ./mpi

# The test binary of ./test, built once: test-golden and test-multihost
# run its golden cases, test-train its training tests (scripts/cluster
# runs it by this name).
$(BIN)/golden.test: deps FORCE
	$(GO) test -c $(GOTAGS) -o $@ ./test

# The communicator conformance suite on real MPI at every size in MPI_NPS.
test-mpi: $(BIN)/mpi.test
	@for np in $(MPI_NPS); do \
	  echo "== mpirun -np $$np mpi.test"; \
	  $(MPIRUN_TEST) $$np $(BIN)/mpi.test -test.run 'TestWorld' -test.v > $(BIN)/mpi-np$$np.log 2>&1; rc=$$?; \
	  grep -E '^(--- |    --- |ok|PASS|FAIL|panic)|SKIP|^\s+[a-z_]+_test.go:[0-9]+: ' $(BIN)/mpi-np$$np.log | sed 's/ ([0-9.]*s)//' | sort | uniq -c; \
	  [ $$rc = 0 ] || { tail -40 $(BIN)/mpi-np$$np.log; exit 1; }; \
	done

# The OpenCLIP golden cases in $(CLIPMPI_GOLDEN): in-process ranks under go
# test, then under mpirun -np W for every world size W among the cases.
test-golden: $(BIN)/golden.test
	@echo "== go test: golden cases with in-process ranks ($(CLIPMPI_GOLDEN))"
	@$(GO) test $(GOTAGS) -count=1 -run 'TestGolden' -v ./test > $(BIN)/golden-inprocess.log 2>&1; rc=$$?; \
	grep -E '^(ok|FAIL|PASS)|^--- |^    --- |^\s+golden_test.go' $(BIN)/golden-inprocess.log; \
	echo "   algorithm runs passed: $$(grep -c -E '^        --- PASS' $(BIN)/golden-inprocess.log)"; \
	[ $$rc = 0 ] || { grep -B2 -A10 -E 'FAIL|panic' $(BIN)/golden-inprocess.log | head -80; exit 1; }
	@worlds=$$(cd test && $(BIN)/golden.test -golden.worlds) || exit 1; \
	for w in $$worlds; do \
	  echo "== mpirun -np $$w golden.test: cases with world_size $$w"; \
	  $(MPIRUN_TEST) $$w -x CLIPMPI_GOLDEN $(BIN)/golden.test -test.run 'TestGoldenMPI' -test.v > $(BIN)/golden-np$$w.log 2>&1; rc=$$?; \
	  grep -E '^(ok|FAIL|PASS)|^--- |^    --- |^\s+golden_test.go' $(BIN)/golden-np$$w.log; \
	  echo "   algorithm runs passed: $$(grep -c -E '^        --- PASS' $(BIN)/golden-np$$w.log)"; \
	  if [ $$rc != 0 ]; then tail -60 $(BIN)/golden-np$$w.log; exit 1; fi; \
	done

.PHONY: test-train

# Training under mpirun -np NP: the TestTrainMPI tests (equivalence with one
# process, accumulation, resume, elastic resume W <-> 1, data and checkpoint
# errors); then the program end to end (scripts/train-e2e.sh): make run's
# job must reach held-out recall@1 > 0.9; killed (SIGKILL) after a
# checkpoint and resumed on another number of ranks (NP -> 1, 1 -> NP), its
# metrics.csv must hold every step once with the uninterrupted run's losses
# (to 1e-5); on float16 .npy shards, a run resumed from its epoch-2
# checkpoint must end where the uninterrupted run ended; a NaN row must end
# the job, the cause printed once.
test-train: $(BIN)/golden.test $(BIN)/train $(BIN)/clustertool
	@echo "== mpirun -np $(NP) golden.test: TestTrainMPI"
	@$(MPIRUN_TEST) $(NP) $(BIN)/golden.test -test.run 'TestTrainMPI' -test.v > $(BIN)/train-np$(NP).log 2>&1; rc=$$?; \
	grep -E '^(--- |    --- |ok|PASS|FAIL|panic)|ranks? → ' $(BIN)/train-np$(NP).log | sed 's/ ([0-9.]*s)//'; \
	[ $$rc = 0 ] || { tail -40 $(BIN)/train-np$(NP).log; exit 1; }
	@CLIPMPI_TIMEOUT=$(TEST_TIMEOUT) scripts/train-e2e.sh $(BIN) $(NP)

# Faults that only one rank meets (README, "When only one rank fails"),
# under mpirun -np 2 and -np 3:
# slurm.Init failing, bad rows met mid-epoch, a checkpoint the reading rank
# cannot open, a ring transfer of ClipLoss and SigLipLoss that fails to
# start, a panic. Each
# must end the job within 10 s, its cause printed once, naming the rank
# (scripts/faults.sh prints the measured times).
.PHONY: test-faults
test-faults: $(BIN)/train $(BIN)/faultprog $(BIN)/clustertool
	@scripts/faults.sh $(BIN)

# Native Go fuzz targets, each for FUZZTIME (scripts/fuzz.sh prints the
# executions and what each found): the Slurm hostlist and tasks-per-node
# parsers, the checkpoint readers, the .npy reader, and the losses against
# float64 references on random shapes, scales, biases and inputs. Their
# seed corpora (testdata/fuzz) run in every go test, so in make test.
FUZZTIME ?= 30s
.PHONY: fuzz
fuzz: deps
	@GO=$(GO) scripts/fuzz.sh $(FUZZTIME)

vet: deps
	$(GO) vet ./...
	$(GO) vet $(GOTAGS) ./...

$(BIN)/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint: deps $(BIN)/staticcheck
	$(BIN)/staticcheck ./...
	$(BIN)/staticcheck $(GOTAGS) ./...

fmt-check:
	@out=$$(gofmt -s -l $$(git ls-files -co --exclude-standard '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt -s would change:"; echo "$$out"; exit 1; fi

fmt:
	gofmt -s -w $$(git ls-files -co --exclude-standard '*.go')

# Go benchmarks of blas, mpi and loss (key=value names, GFLOP/s).
bench: deps
	OPENBLAS_NUM_THREADS=1 $(GO) test $(GOTAGS) -run '^$$' -bench . -benchmem ./blas ./loss ./mpi

# The distributed loss per algorithm against its floor (GEMM time at the
# measured sgemm rate + bytes at the measured collective bandwidth).
B     ?= 1024
D     ?= 512
MODE  ?= local_gwg
ALGO  ?= all
DTYPE ?= float32
STEPS ?= 10
LOSS  ?= clip
TILE  ?= 0
# Threads per rank for the BLAS and the loss kernels; 0: usable CPUs / NP.
THREADS ?= 0
# Rounds: every configuration is measured REPEAT times, round after round,
# and each reports its round with the lowest median step against the lowest
# GEMM floor of its rounds (shared machines: others' work only adds time).
REPEAT ?= 3
bench-loss: build
	$(if $(filter-out 0,$(THREADS)),OPENBLAS_NUM_THREADS=$(THREADS) )$(MPIRUN) $(NP) $(BIN)/bench -loss $(LOSS) -b $(B) -d $(D) -mode $(MODE) -algo $(ALGO) -dtype $(DTYPE) -precision $(PRECISION) -sums-bf16=$(SUMS_BF16) -steps $(STEPS) -tile $(TILE) -threads $(THREADS) -repeat $(REPEAT)

# A shaped network (scripts/cluster/benchnet.sh; root): two hosts in
# network namespaces, one rank each, each direction of their link limited
# to RATE by tc's tbf; every algorithm of both losses against the link rate
# measured in the same run, REPEAT rounds (each algorithm's fastest
# reported). B, D, STEPS, MODE, TILE, DTYPE as above; NICE (e.g. -10) runs
# the ranks ahead of other jobs on a shared machine.
RATE   ?= 2gbit
NICE   ?=
.PHONY: bench-net
bench-net: build
	@RATE=$(RATE) REPEAT=$(REPEAT) NICE=$(NICE) B=$(B) D=$(D) STEPS=$(STEPS) MODE=$(MODE) TILE=$(TILE) DTYPE=$(DTYPE) PRECISION=$(PRECISION) SUMS_BF16=$(SUMS_BF16) \
	  flock /tmp/clipmpi-cluster.lock timeout --foreground -k 30 660 scripts/cluster/benchnet.sh $(BIN)

clean:
	rm -rf $(BIN) run

FORCE:

# Clusters, for real (scripts/cluster; as root, else they skip saying why):
# test-slurm installs munge and Slurm, starts munged, slurmctld and slurmd
# by hand and runs slurm/train.sbatch with 2 tasks under srun and mpirun,
# then slurm/train-multinode.sbatch on a two-node cluster (slurmd in two
# network namespaces) and fault (b) under Slurm, a node's link cut;
# test-multihost runs mpirun over TCP across two network-namespace hosts:
# golden cases, training, and the fail-fast cases (a)-(e) with their time
# bounds. Each harness ends its run within 360 s and cleans up on exit and
# on SIGINT/SIGTERM; timeout stops it at 420 s (SIGTERM, so that it cleans
# up; SIGKILL 30 s later), in the foreground so that Ctrl-C still reaches it.
.PHONY: test-slurm test-multihost
$(BIN)/faultprog: deps FORCE
	$(GO) build $(GOTAGS) -o $@ ./test/faultprog

$(BIN)/clustertool: FORCE
	$(GO) build -o $@ ./test/clustertool

test-slurm: $(BIN)/train $(BIN)/faultprog $(BIN)/clustertool lib deps-python
	@timeout --foreground -k 30 420 scripts/cluster/slurm.sh $(BIN)

test-multihost: $(BIN)/train $(BIN)/faultprog $(BIN)/clustertool $(BIN)/golden.test
	@timeout --foreground -k 30 420 scripts/cluster/multihost.sh $(BIN)

# The C ABI (capi/; the documented header is capi/clipmpi.h): `make lib`
# builds lib/libclipmpi.so and writes include/clipmpi.h; python/clipmpi
# loads the library. test-capi runs the C program capi/ctest/golden.c
# (mpicc) on every golden case under mpirun -np W for each W among the
# cases, with MPI initialised by the program and, at NP ranks, by the
# library; and checks that MPI_Init's MPI_THREAD_SINGLE is refused.
.PHONY: lib test-capi
LIBCLIPMPI := $(CURDIR)/lib/libclipmpi.so

lib: deps $(LIBCLIPMPI)

$(LIBCLIPMPI): FORCE
	$(GO) build $(GOTAGS) -buildmode=c-shared -o $@ ./capi
	@rm -f $(CURDIR)/lib/libclipmpi.h
	@mkdir -p $(CURDIR)/include && cp capi/clipmpi.h $(CURDIR)/include/clipmpi.h

$(BIN)/capi-golden: lib capi/ctest/golden.c capi/ctest/json.c capi/ctest/json.h
	@mkdir -p $(BIN)
	mpicc -O2 -Wall -Wextra -I$(CURDIR)/include capi/ctest/golden.c capi/ctest/json.c \
		-L$(CURDIR)/lib -lclipmpi -Wl,-rpath,$(CURDIR)/lib -lm -o $@

test-capi: $(BIN)/capi-golden $(BIN)/golden.test
	@worlds=$$(cd test && $(BIN)/golden.test -golden.worlds) || exit 1; \
	for w in $$worlds; do \
	  echo "== mpirun -np $$w capi-golden (MPI initialised by the program)"; \
	  $(MPIRUN_TEST) $$w $(BIN)/capi-golden $(CLIPMPI_GOLDEN) > $(BIN)/capi-np$$w.log 2>&1; rc=$$?; \
	  grep -E '^(  |[0-9]+ case files|float32|PASS|FAIL|rank [0-9]+: FAIL)' $(BIN)/capi-np$$w.log | head -40; \
	  [ $$rc = 0 ] || { tail -30 $(BIN)/capi-np$$w.log; exit 1; }; \
	done
	@echo "== mpirun -np $(NP) capi-golden --lib-init (MPI initialised and finalised by the library)"
	@$(MPIRUN_TEST) $(NP) $(BIN)/capi-golden --lib-init $(CLIPMPI_GOLDEN) > $(BIN)/capi-libinit.log 2>&1; rc=$$?; \
	grep -E '^([0-9]+ case files|PASS|FAIL|rank [0-9]+: FAIL)' $(BIN)/capi-libinit.log; \
	[ $$rc = 0 ] || { tail -30 $(BIN)/capi-libinit.log; exit 1; }
	@echo "== mpirun -np $(NP) capi-golden --init-single (MPI_Init: the library must refuse MPI_THREAD_SINGLE)"
	@$(MPIRUN_TEST) $(NP) $(BIN)/capi-golden --init-single > $(BIN)/capi-single.log 2>&1; rc=$$?; \
	grep -E '^(MPI_Init|PASS|FAIL)' $(BIN)/capi-single.log; \
	[ $$rc = 0 ] || { tail -30 $(BIN)/capi-single.log; exit 1; }

# The Python package (python/clipmpi: ctypes over lib/libclipmpi.so, and
# clipmpi.torch) with Debian's PyTorch: PYTHON_TORCH is the interpreter
# whose packages scripts/deps-python.sh installs (python3-torch,
# python3-pytest, python3-mpi4py). test-python runs python/tests under
# mpirun (python/tests/pytest-rank.sh: ranks other than 0 write to
# bin/pytest-*/rank<r>.log, shown when a suite fails): every
# golden case at each world size, the error paths, precision (amp_bf16
# against fp32 and OpenCLIP's loss under autocast) and the DDP training
# equivalence at NP ranks, the mpi4py communicators (mpi4py initialises
# MPI), the launch checks (plain pytest: it starts its own processes), and
# examples/torch/train.py on the synthetic set and on float16 .npy shards:
# held-out recall must rise (clustertool summary).
.PHONY: deps-python test-python
PYTHON_TORCH ?= /usr/bin/python3
PYTEST_ARGS := -p no:cacheprovider -q -rs --color=no

deps-python:
	@scripts/deps-python.sh $(PYTHON_TORCH)

# $(call pytest_mpi,NP,NAME,FILES): pytest FILES under mpirun -np NP.
define pytest_mpi
	@echo "== mpirun -np $(1) pytest $(3)"
	@rm -rf $(BIN)/pytest-$(2); \
	PYTHONPATH=$(CURDIR)/python CLIPMPI_PYTEST_LOGS=$(BIN)/pytest-$(2) OMP_NUM_THREADS=1 PYTHON_TORCH=$(PYTHON_TORCH) \
	$(MPIRUN_TEST) $(1) -x PYTHONPATH -x CLIPMPI_PYTEST_LOGS -x OMP_NUM_THREADS -x PYTHON_TORCH \
	  python/tests/pytest-rank.sh $(PYTEST_ARGS) $(3); rc=$$?; \
	if [ $$rc != 0 ]; then for f in $(BIN)/pytest-$(2)/rank*.log; do echo "-- $$f"; tail -40 $$f; done; exit 1; fi
endef

test-python: lib deps-python $(BIN)/golden.test $(BIN)/train $(BIN)/clustertool
	@worlds=$$(cd test && $(BIN)/golden.test -golden.worlds) || exit 1; \
	for w in $$worlds; do \
	  $(MAKE) --no-print-directory test-python-golden PYTEST_NP=$$w || exit 1; \
	done
	$(call pytest_mpi,$(NP),errors-train,python/tests/test_errors.py python/tests/test_precision.py python/tests/test_train.py)
	$(call pytest_mpi,$(NP),mpi4py,python/tests/test_mpi4py.py)
	@echo "== pytest python/tests/test_launch.py (its own processes)"
	@PYTHONPATH=$(CURDIR)/python $(PYTHON_TORCH) -m pytest $(PYTEST_ARGS) python/tests/test_launch.py
	@echo "== mpirun -np $(NP) examples/torch/train.py: synthetic embeddings, then gen-data's float16 .npy shards"
	@d=$(BIN)/torch-train; rm -rf $$d; mkdir -p $$d; set -e; \
	$(BIN)/train gen-data --out $$d/data --rows 4096 --val-size 500 --shards 2 --dtype float16 > $$d/log; \
	for run in "synthetic:--rows 4096 --val-size 500" "npy:--train-data $$d/data/train --val-data $$d/data/val"; do \
	  name=$${run%%:*}; \
	  OMP_NUM_THREADS=1 $(MPIRUN_TEST) $(NP) -x OMP_NUM_THREADS $(PYTHON_TORCH) examples/torch/train.py $${run#*:} \
	    --batch-size 256 --epochs 3 --summary $$d/$$name.json >> $$d/log 2>&1 || { tail -30 $$d/log; exit 1; }; \
	  printf '   %-9s ' $$name; $(BIN)/clustertool summary -file $$d/$$name.json -world $(NP); \
	done

.PHONY: test-python-golden
test-python-golden:
	$(call pytest_mpi,$(PYTEST_NP),golden-np$(PYTEST_NP),python/tests/test_golden.py)

# The bridge's cost, measured: clipmpi.torch.ClipLoss forward + backward
# inside PyTorch, the same loss from Go (bin/bench) and the PyTorch
# reference of OpenCLIP's loss over gloo, under mpirun -np NP at b = TORCH_B
# rows per rank, d = D, float32, one thread per rank (local_loss +
# gather_with_grad), each in fp32 and again in amp_bf16 (the reference under
# torch.autocast to bfloat16), each with its peak RSS; TORCH_REPS rounds interleaved,
# judged on the best round of each (a shared machine disturbs some).
# Runs under the bench lock, so that two benchmarks never overlap.
.PHONY: bench-torch
TORCH_B    ?= 1024 4096
TORCH_REPS ?= 3
bench-torch: build lib deps-python
	flock /tmp/clipmpi-bench.lock $(PYTHON_TORCH) examples/torch/bench_torch.py --bin $(BIN) --np $(NP) \
		-b $(TORCH_B) -d $(D) --steps $(STEPS) --reps $(TORCH_REPS)

# The arm64 port from this amd64 machine (scripts/test-arm64.sh): installs
# Debian's cross compiler and qemu-user when absent, cross-builds and vets
# every package and command for GOARCH=arm64 with cgo on (and with the
# openblas tag against Debian's arm64 OpenBLAS), then runs the unit tests of
# blas, loss and clip under qemu-aarch64-static.
.PHONY: test-arm64
test-arm64:
	@GO=$(GO) scripts/test-arm64.sh
