# liblsoftmax: CUDA kernels + CPU backend behind one C ABI, bound from Deno.
#
#   make            build build/liblsoftmax.so
#   make example    build, then run examples/train.ts
#   make demo       build, set up Fashion-MNIST, then train the TensorFlow.js demo
#                   (examples/fashion_mnist.ts): docs/fashion_mnist.md and its SVGs
#   make demo-sweep the grid of settings behind the demo's (examples/demo_sweep.ts, about 15
#                   minutes on 2 cores, niced): docs/fashion_mnist_sweep.md
#   make test       set up what is missing, build, then fmt/lint/type checks, the linkage check,
#                   the Deno tests, the build without the CUDA toolkit (test-nocuda), and the same
#                   tests with the CUDA kernels on the CPU execution layer (test-emu)
#   make bench      the benchmarks (deno bench); make perf-table: the README's table
#
# The GPU targets: CUDA_ARCHS (real code) and CUDA_PTX (PTX, JIT-compiled by newer drivers).
# Without nvcc (NVCC pointing nowhere) every target builds the library without the CUDA backend.

CUDA_HOME  ?= /usr/local/cuda
NVCC       ?= $(CUDA_HOME)/bin/nvcc
CXX        ?= g++
CUDA_ARCHS ?= 75 80 86 89 90 100 120
CUDA_PTX   ?= 120
DENO       ?= scripts/deno
DENO_TEST_FLAGS := --allow-ffi --allow-env --allow-read --allow-write --allow-net --allow-run --v8-flags=--expose-gc
BUILD      ?= build
# The Deno commands load the library this make built (so BUILD=... tests and measures that one).
WITH_LIB    = LSOFTMAX_LIB=$(abspath $(LIB))

comma    := ,
empty    :=
space    := $(empty) $(empty)
GENCODE  := $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
            $(foreach a,$(CUDA_PTX),-gencode arch=compute_$(a),code=compute_$(a))
WARN     := -Wall -Wextra -Wshadow -Werror
CXXFLAGS += -std=c++17 -O3 -fPIC -fvisibility=hidden $(WARN)
NVFLAGS  := -std=c++17 -O3 $(GENCODE) -Werror all-warnings \
            -Xcompiler -fPIC,-fvisibility=hidden,$(subst $(space),$(comma),$(WARN))
# Where nvcc is missing (NVCC pointing nowhere), the library is built without the CUDA backend:
# a stand-in (cuda/gpu/none.cpp) reports "built without CUDA" and the CPU backend serves.
HAVE_NVCC := $(if $(shell command -v "$(NVCC)" 2>/dev/null),yes,)

# The library is self-contained: OpenBLAS, the CUDA runtime, libstdc++ and libgcc linked in, only
# the lsm_ ABI exported (cuda/api/exports.map), so that ldd shows the C library's parts alone
# (scripts/check-linkage.sh) and the copies inside cannot clash with a host process's.
# OPENBLAS_A and the lists below are expanded when the link runs, after set-up has installed
# OpenBLAS; without its static archive (set-up could not install it) the shared one is linked.
MULTIARCH  := $(or $(shell $(CXX) -print-multiarch 2>/dev/null),$(shell uname -m)-linux-gnu)
OPENBLAS_A ?= $(firstword $(wildcard /usr/lib/$(MULTIARCH)/openblas-pthread/libopenblas.a \
                /usr/lib/$(MULTIARCH)/libopenblas.a))
LINK_FLAGS := -shared -static-libstdc++ -static-libgcc -Wl,--exclude-libs,ALL \
              -Wl,--version-script=cuda/api/exports.map -Wl,--no-undefined
BLAS_LIBS   = $(or $(OPENBLAS_A),-lopenblas) -lm -lpthread
LDLIBS      = $(if $(HAVE_NVCC),-L$(CUDA_HOME)/lib64 -l:libcudart_static.a) $(BLAS_LIBS) -ldl -lrt

HEADERS  := $(wildcard cuda/*.h cuda/*/*.h cuda/*/*.cuh)
LIB      := $(BUILD)/liblsoftmax.so
# The library's sources (under cuda/, objects under $(BUILD)/obj/): host C++ by g++, and the CUDA
# backend by nvcc (or by g++ on the emulator: mk/emu.mk).
HOST_SRC := api/checks api/checks_optim api/context api/glibc_compat api/layout api/mpi api/nccl api/nccl_init api/ops cpu/backend cpu/fused_update cpu/loss cpu/loss_blocks cpu/loss_direct cpu/loss_op cpu/op cpu/gather cpu/optim cpu/rows
HOST_OBJ := $(patsubst %,$(BUILD)/obj/%.o,$(HOST_SRC))
# The fused loss's row kernels again for AVX2 + FMA on x86-64, picked at run time (cpu/rows.h).
ifeq ($(shell uname -m),x86_64)
HOST_OBJ += $(BUILD)/obj/cpu/rows_avx2.o
$(BUILD)/obj/cpu/rows.o: CXXFLAGS += -DLSM_ROWS_AVX2
$(BUILD)/obj/cpu/rows_avx2.o: CXXFLAGS += -mavx2 -mfma
endif
CUDA_SRC := gpu/backend gpu/blas gpu/op gpu/loss gpu/optim gpu/gather gpu/nccl
CUDA_OBJ := $(if $(HAVE_NVCC),$(patsubst %,$(BUILD)/obj/%.o,$(CUDA_SRC)),$(BUILD)/obj/gpu/none.o)

.PHONY: all example demo demo-sweep demo-distributed test check check-linkage test-nocuda test-mpi bench perf-table clean setup setup-host

all: $(LIB)

# Set-up is order-only: a plain `make` on a fresh machine installs what the build needs first.
# Only the nvcc-compiled objects need nvcc: the emulated library (mk/emu.mk) builds without it.
$(BUILD)/obj/%.o: cuda/%.cpp $(HEADERS) | setup-host
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -Icuda -c $< -o $@

# The row kernels vectorize only where FP selects may be if-converted (cpu/rows.h).
$(BUILD)/obj/cpu/rows.o $(BUILD)/obj/cpu/rows_avx2.o: CXXFLAGS += -fno-trapping-math -fno-math-errno
# The optimizer's loops too: Adam's sqrt sets no errno then, and amsgrad's max is a select.
$(BUILD)/obj/cpu/optim.o: CXXFLAGS += -fno-trapping-math -fno-math-errno
# And the fused step's a-priori bound: its largest magnitude is a select too.
$(BUILD)/obj/cpu/fused_update.o: CXXFLAGS += -fno-trapping-math -fno-math-errno

$(BUILD)/obj/%.o: cuda/%.cu $(HEADERS) | setup
	@mkdir -p $(@D)
	$(NVCC) $(NVFLAGS) -Icuda -c $< -o $@

$(LIB): $(HOST_OBJ) $(CUDA_OBJ) cuda/api/exports.map
	$(CXX) $(LINK_FLAGS) -o $@ $(HOST_OBJ) $(CUDA_OBJ) $(LDLIBS)
	@$(if $(HAVE_NVCC),:,echo "make: no nvcc at $(NVCC): $@ has no CUDA backend (CPU only)")

# Installs what is missing on this machine (OpenBLAS from apt, Deno from npm); setup also
# checks that nvcc is there.
setup-host:
	CC="$(CC)" scripts/setup.sh host

setup: setup-host
	NVCC="$(NVCC)" CUDA_HOME="$(CUDA_HOME)" scripts/setup.sh nvcc

example: setup $(LIB)
	$(WITH_LIB) $(DENO) run --allow-ffi --allow-env=LSOFTMAX_LIB examples/train.ts

# The demo writes its table and pictures into docs/ (at most 10 minutes on 2 cores).
demo: setup $(LIB)
	scripts/setup.sh dataset
	$(WITH_LIB) $(DENO) run --allow-ffi --allow-env --allow-read \
	  --allow-write=docs examples/fashion_mnist.ts
	$(DENO) fmt docs/fashion_mnist.md

# The demo's sweep, niced: it is long and the machine may be shared.
demo-sweep: setup $(LIB)
	scripts/setup.sh dataset
	$(WITH_LIB) nice -n 10 $(DENO) run --allow-ffi --allow-env --allow-read \
	  --allow-write=docs examples/demo_sweep.ts
	$(DENO) fmt docs/fashion_mnist_sweep.md

check: setup-host
	$(DENO) fmt --check
	$(DENO) lint
	$(DENO) doc --lint mod.ts
	$(DENO) doc --lint tfjs.ts
	$(DENO) check --doc mod.ts tfjs.ts ffi/*.ts tests/*.ts tests/native/*.ts tests/fixtures/*.ts tests/mpi/*.ts bench/*.ts \
	  examples/*.ts
	$(DENO) check --doc-only README.md

# The suite on the real library (its CUDA tests skip without a GPU), then again on the CPU
# execution layer, where they run the CUDA kernels (mk/emu.mk).
test: setup $(LIB) check check-linkage
	$(WITH_LIB) DENO=$(DENO) SUITE_LABEL=test scripts/test-suite.sh $(DENO_TEST_FLAGS) tests/
	$(MAKE) --no-print-directory test-nocuda
	$(MAKE) --no-print-directory test-emu
	$(MAKE) --no-print-directory test-mpi

# The library that ships is self-contained: ldd shows the C library only, only lsm_* exported.
check-linkage: $(LIB)
	scripts/check-linkage.sh $(LIB)

# The build without the CUDA toolkit (NVCC pointing nowhere: the host objects and the stand-in
# CUDA backend) into $(NOCUDA_BUILD), and the checks that it reports "built without CUDA" and
# that its CPU loss works.
NOCUDA_BUILD ?= $(BUILD)/nocuda
test-nocuda: setup-host
	$(MAKE) --no-print-directory BUILD=$(NOCUDA_BUILD) NVCC=/nonexistent $(NOCUDA_BUILD)/liblsoftmax.so
	scripts/check-linkage.sh $(NOCUDA_BUILD)/liblsoftmax.so
	LSOFTMAX_LIB=$(abspath $(NOCUDA_BUILD))/liblsoftmax.so $(DENO) test $(DENO_TEST_FLAGS) \
	  tests/native/nocuda_check.ts tests/loss_test.ts

# Ranks over Open MPI (distributed: "mpi", installed by set-up): mpirun -np 3, 2 and 1 on the CPU
# backend and on the emulated CUDA backend, there again with distributed: "nccl" through NCCL's
# stand-in (scripts/test-mpi.sh, about 40 s).
test-mpi: setup-host $(LIB) $(BUILD)/liblsoftmax_emu.so $(BUILD)/emu/libnccl_stand_in.so
	scripts/setup.sh mpi
	DENO=$(DENO) NCCL_STAND_IN=$(abspath $(BUILD)/emu/libnccl_stand_in.so) scripts/test-mpi.sh $(LIB)=cpu $(BUILD)/liblsoftmax_emu.so=cuda:0

# Two ranks training one head (examples/distributed.ts).
demo-distributed: setup-host $(LIB)
	scripts/setup.sh mpi
	OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 $(WITH_LIB) mpirun -np 2 --oversubscribe \
	  $(DENO) run --allow-ffi --allow-env examples/distributed.ts

bench: setup $(LIB)
	$(WITH_LIB) $(DENO) bench --allow-ffi --allow-env --allow-read bench/

perf-table: setup $(LIB)
	$(WITH_LIB) LSOFTMAX_MACHINE="$$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" \
	$(DENO) run --allow-ffi --allow-env --allow-read --allow-run bench/table.ts

clean:
	rm -rf $(BUILD)

# The CPU execution layer for the CUDA kernels (make test-emu) and the GPU check.
-include mk/emu.mk

# dist/: the module and this build's library, to be served as is (scripts/dist.sh).
.PHONY: dist
dist: $(LIB)
	DENO=$(DENO) scripts/dist.sh --out dist $(LIB)
