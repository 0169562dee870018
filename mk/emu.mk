# mk/emu.mk: the CUDA backend on the CPU execution layer (emulator/), included by the Makefile.
#
#   make test-emu       the emulator's self-test, the sanitizer run, then the whole Deno suite
#                       against build/liblsoftmax_emu.so (CUDA-path tests included; linked as
#                       liblsoftmax.so is, self-contained), and a count of the kernel launches
#                       it made; then the CUDA suites again with the products through the
#                       cuBLAS stand-in (emulator/cublas_stand_in.cpp)
#   make planted-emu    kernels with a planted missing barrier must fail under the emulator
#   make mutants-emu    the real kernels with any one barrier removed must fail the tests
#   make sanitize-emu   forward/backward through the C ABI under ASan + UBSan, against the CPU
#                       backend; planted faults must be caught
#   make gpu-check      on a CUDA machine only: scripts/gpu-check.sh
#
# All but gpu-check need g++ and OpenBLAS only: no nvcc, no GPU.

EMU_DIR     := emulator
EMU_BUILD   := $(BUILD)/emu
EMU_LIB     := $(BUILD)/liblsoftmax_emu.so
EMU_CUBLAS  := $(EMU_BUILD)/libcublas_stand_in.so
EMU_FLAGS   := -x c++ -DLSM_EMU -I$(EMU_DIR) -Icuda
EMU_HEADERS := $(HEADERS) $(wildcard $(EMU_DIR)/*.h)
# The library links as liblsoftmax.so does (the Makefile's LINK_FLAGS, OpenBLAS inside); the
# sanitizer's programs link the shared OpenBLAS.
EMU_LDLIBS   = $(or $(BLAS_LIBS),-lopenblas -lpthread)
SAN_LDLIBS  := -lopenblas -lpthread
SAN_FLAGS   := -std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
               -fno-sanitize-recover=all $(WARN)
# The fibers are annotated for ASan, so detect_stack_use_after_return=1 works too; it is off only
# because it triples the run time.
SAN_ENV     := ASAN_OPTIONS=detect_stack_use_after_return=0:detect_leaks=1:abort_on_error=0 \
               UBSAN_OPTIONS=print_stacktrace=1 OPENBLAS_NUM_THREADS=1
# The Deno flags of the suite: the Makefile's DENO_TEST_FLAGS where it defines them.
EMU_TEST_FLAGS ?= $(or $(DENO_TEST_FLAGS),--allow-ffi --allow-env --allow-read --allow-write --allow-net --allow-run --v8-flags=--expose-gc)
EMU_CUDA_OBJ := $(addprefix $(EMU_BUILD)/,$(addsuffix .o,$(CUDA_SRC)))
EMU_SAN_OBJ := $(patsubst %,$(EMU_BUILD)/san/%.o,$(HOST_SRC) $(CUDA_SRC) emu_runtime)

.PHONY: test-emu planted-emu sanitize-emu mutants-emu

$(EMU_BUILD) $(EMU_BUILD)/san:
	mkdir -p $@

# The library: the host objects as for liblsoftmax.so; the CUDA sources by g++.
$(EMU_BUILD)/%.o: cuda/%.cu $(EMU_HEADERS) | $(EMU_BUILD)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $(EMU_FLAGS) -c $< -o $@

$(EMU_BUILD)/emu_runtime.o: $(EMU_DIR)/emu_runtime.cpp $(EMU_HEADERS) | $(EMU_BUILD)
	$(CXX) $(CXXFLAGS) $(EMU_FLAGS) -c $< -o $@

$(EMU_LIB): $(HOST_OBJ) $(EMU_CUDA_OBJ) $(EMU_BUILD)/emu_runtime.o cuda/api/exports.map
	$(CXX) $(or $(LINK_FLAGS),-shared -Wl,--no-undefined) -o $@ $(HOST_OBJ) $(EMU_CUDA_OBJ) $(EMU_BUILD)/emu_runtime.o \
	  $(EMU_LDLIBS)

# The self-test and the planted-barrier kernels.
$(EMU_BUILD)/planted: tests/native/planted.cu $(EMU_BUILD)/emu_runtime.o $(EMU_HEADERS)
	$(CXX) $(CXXFLAGS) $(EMU_FLAGS) -c $< -o $@.o
	$(CXX) -o $@ $@.o $(EMU_BUILD)/emu_runtime.o -lpthread

planted-emu: $(EMU_BUILD)/planted
	$<

# The sanitizer build: every source of the library, the emulator and the driver under ASan+UBSan.
$(EMU_BUILD)/san/%.o: cuda/%.cpp $(EMU_HEADERS) | $(EMU_BUILD)/san
	@mkdir -p $(@D)
	$(CXX) $(SAN_FLAGS) -Icuda -c $< -o $@

$(EMU_BUILD)/san/%.o: cuda/%.cu $(EMU_HEADERS) | $(EMU_BUILD)/san
	@mkdir -p $(@D)
	$(CXX) $(SAN_FLAGS) $(EMU_FLAGS) -c $< -o $@

$(EMU_BUILD)/san/emu_runtime.o: $(EMU_DIR)/emu_runtime.cpp $(EMU_HEADERS) | $(EMU_BUILD)/san
	$(CXX) $(SAN_FLAGS) $(EMU_FLAGS) -c $< -o $@

$(EMU_BUILD)/san/sanitize_driver: tests/native/sanitize_driver.cpp tests/native/sanitize_support.h $(EMU_SAN_OBJ) \
  cuda/lsoftmax.h
	$(CXX) $(SAN_FLAGS) -Icuda $< $(EMU_SAN_OBJ) -o $@ $(SAN_LDLIBS)

$(EMU_BUILD)/san/planted: tests/native/planted.cu $(EMU_BUILD)/san/emu_runtime.o $(EMU_HEADERS)
	$(CXX) $(SAN_FLAGS) $(EMU_FLAGS) $< -x none $(EMU_BUILD)/san/emu_runtime.o -o $@ -lpthread

$(EMU_BUILD)/san/planted_fault: tests/native/planted_fault.cu $(EMU_BUILD)/san/emu_runtime.o $(EMU_HEADERS)
	$(CXX) $(SAN_FLAGS) $(EMU_FLAGS) $< -x none $(EMU_BUILD)/san/emu_runtime.o -o $@ -lpthread

sanitize-emu: $(EMU_BUILD)/san/sanitize_driver $(EMU_BUILD)/san/planted $(EMU_BUILD)/san/planted_fault $(EMU_CUBLAS)
	$(SAN_ENV) $(EMU_BUILD)/san/planted >$(EMU_BUILD)/san/planted.log 2>&1 || { cat $(EMU_BUILD)/san/planted.log; exit 1; }
	$(SAN_ENV) $(EMU_BUILD)/san/sanitize_driver
	$(SAN_ENV) LSM_EMU_SCHEDULE=shuffle LSM_EMU_SEED=7 $(EMU_BUILD)/san/sanitize_driver quick
	$(SAN_ENV) LSOFTMAX_CUBLAS=$(abspath $(EMU_CUBLAS)) $(EMU_BUILD)/san/sanitize_driver quick
	@for fault in oob:heap-buffer-overflow overflow:signed.integer.overflow; do \
	  log=$(EMU_BUILD)/san/planted_fault.$${fault%%:*}.log; \
	  if $(SAN_ENV) $(EMU_BUILD)/san/planted_fault $${fault%%:*} >$$log 2>&1; then \
	    echo "sanitize-emu: the planted $${fault%%:*} fault went unnoticed (see $$log)" >&2; exit 1; fi; \
	  if ! grep -Eq "$${fault#*:}" $$log; then \
	    echo "sanitize-emu: the planted $${fault%%:*} fault failed without the expected report (see $$log)" >&2; \
	    exit 1; fi; \
	  echo "sanitize-emu: the planted $${fault%%:*} fault in a kernel was caught ($${fault#*:})"; \
	done

# cuBLAS's stand-in (emulator/cublas_stand_in.cpp), loaded as cuBLAS is: LSOFTMAX_CUBLAS=its path.
$(EMU_CUBLAS): $(EMU_DIR)/cublas_stand_in.cpp $(EMU_DIR)/mma.h | $(EMU_BUILD)
	$(CXX) $(CXXFLAGS) -I$(EMU_DIR) -shared -static-libstdc++ -static-libgcc -Wl,--exclude-libs,ALL -Wl,--no-undefined \
	  $< -o $@ \
	  $(EMU_LDLIBS)

# NCCL's stand-in (emulator/nccl_stand_in.cpp), loaded as NCCL is: LSOFTMAX_NCCL=its path; its
# collectives are Open MPI's, which the library has loaded when it opens NCCL.
EMU_NCCL := $(EMU_BUILD)/libnccl_stand_in.so
$(EMU_NCCL): $(EMU_DIR)/nccl_stand_in.cpp | $(EMU_BUILD)
	$(CXX) $(CXXFLAGS) -shared -static-libstdc++ -static-libgcc -Wl,--exclude-libs,ALL -Wl,--no-undefined $< -o $@ -ldl

# The CUDA suites again with the products through cuBLAS's stand-in.
EMU_CUBLAS_TESTS := tests/cublas_test.ts tests/bf16_test.ts tests/tf32_test.ts tests/cuda_test.ts tests/head_test.ts \
                    tests/adam_test.ts tests/adaptive_test.ts tests/subcenter_cuda_test.ts

# The Deno suite against the emulated CUDA backend; scripts/test-suite.sh ends with the kernel
# launches the library logged at exit (none at all means the CUDA path was never reached).
test-emu: planted-emu sanitize-emu $(EMU_LIB) $(EMU_CUBLAS)
	scripts/check-linkage.sh $(EMU_LIB)
	LSM_EMU_LAUNCH_LOG=$(abspath $(EMU_BUILD))/launches.log LSOFTMAX_LIB=$(abspath $(EMU_LIB)) \
	  DENO=$(DENO) SUITE_LABEL=test-emu scripts/test-suite.sh $(EMU_TEST_FLAGS) tests/
	LSOFTMAX_CUBLAS=$(abspath $(EMU_CUBLAS)) LSOFTMAX_LIB=$(abspath $(EMU_LIB)) DENO=$(DENO) \
	  SUITE_LABEL=test-emu-cublas scripts/test-suite.sh $(EMU_TEST_FLAGS) $(EMU_CUBLAS_TESTS)
	$(MAKE) --no-print-directory mutants-emu

# Each barrier of the kernels removed in turn must fail the CUDA-path tests (about a minute).
mutants-emu: $(HOST_OBJ) $(EMU_BUILD)/emu_runtime.o
	CXX="$(CXX)" DENO="$(DENO)" BUILD="$(BUILD)" HOST_OBJ="$(HOST_OBJ)" CUDA_SRC="$(CUDA_SRC)" \
	  scripts/barrier-mutants.sh

# On a CUDA machine: build for its GPU only, then the suite, compute-sanitizer and deno bench on
# the real backend (scripts/gpu-check.sh); logs and summary.md go to GPU_CHECK_OUT ($OUT if set).
GPU_CHECK_OUT ?= $(or $(OUT),$(BUILD)/gpu-check-out)
.PHONY: gpu-check
gpu-check:
	scripts/gpu-check.sh $(GPU_CHECK_OUT)
