// blas.cu: finding and loading cuBLAS (blas.h says where it looks), once per process.
#include <dlfcn.h>
#include <glob.h>
#include <stdlib.h>

#include <mutex>
#include <string>
#include <vector>

#include "gpu/blas.h"

namespace lsm_blas {
namespace {

const char *const kSonames[] = {"libcublas.so.13", "libcublas.so.12"};

std::string env(const char *name) {
  const char *v = getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

// The candidates after the loader's own search, in order.
std::vector<std::string> candidates() {
  std::vector<std::string> dirs;
  for (const char *var : {"CUDA_HOME", "CUDA_PATH"})
    if (!env(var).empty()) dirs.push_back(env(var) + "/lib64");
  dirs.push_back("/usr/local/cuda/lib64");
  std::vector<std::string> roots;
  for (const char *var : {"VIRTUAL_ENV", "CONDA_PREFIX"})
    if (!env(var).empty()) roots.push_back(env(var) + "/lib/python3*/site-packages");
  if (!env("HOME").empty()) roots.push_back(env("HOME") + "/.local/lib/python3*/site-packages");
  roots.push_back("/usr/local/lib/python3*/dist-packages");
  roots.push_back("/usr/lib/python3/dist-packages");
  for (const std::string &root : roots)
    for (const char *sub : {"/nvidia/cu13/lib", "/nvidia/cublas/lib"}) {
      glob_t g = {};
      if (glob((root + sub).c_str(), GLOB_NOSORT, nullptr, &g) == 0)
        for (size_t i = 0; i < g.gl_pathc; ++i) dirs.push_back(g.gl_pathv[i]);
      globfree(&g);
    }
  std::vector<std::string> out;
  for (const std::string &dir : dirs)
    for (const char *so : kSonames) out.push_back(dir + "/" + so);
  return out;
}

// Opens one candidate and binds the calls; on failure says why in `why` and returns false.
bool open(const std::string &path, api *calls, void **handle, std::string *why) {
  void *h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) {
    const char *e = dlerror();
    *why = e != nullptr ? e : path + ": cannot be loaded";
    return false;
  }
  struct entry {
    const char *name;
    void **slot;
  };
  const entry entries[] = {
      {"cublasCreate_v2", reinterpret_cast<void **>(&calls->create)},
      {"cublasDestroy_v2", reinterpret_cast<void **>(&calls->destroy)},
      {"cublasSetStream_v2", reinterpret_cast<void **>(&calls->set_stream)},
      {"cublasSetWorkspace_v2", reinterpret_cast<void **>(&calls->set_workspace)},
      {"cublasGetProperty", reinterpret_cast<void **>(&calls->get_property)},
      {"cublasGemmEx", reinterpret_cast<void **>(&calls->gemm_ex)},
  };
  for (const entry &e : entries) {
    *e.slot = dlsym(h, e.name);
    if (*e.slot == nullptr) {
      *why = path + " has no " + e.name + " (cuBLAS 11.0 or newer is needed)";
      dlclose(h);
      return false;
    }
  }
  *handle = h;
  return true;
}

library find() {
  static api calls;
  library lib;
  void *handle = nullptr;
  const std::string named = env("LSOFTMAX_CUBLAS");
  if (named == "off") {
    lib.why = "LSOFTMAX_CUBLAS=off";
    return lib;
  }
  if (!named.empty()) {
    std::string why;
    if (open(named, &calls, &handle, &why)) {
      lib.calls = &calls, lib.path = named;
    } else {
      lib.why = "LSOFTMAX_CUBLAS=" + named + " did not load: " + why;
      lib.refused = true;
    }
    return lib;
  }
  std::string why;
  for (const char *so : kSonames)
    if (open(so, &calls, &handle, &why)) {
      Dl_info info = {};
      lib.calls = &calls;
      // The loader's choice, as a path where it can say (dladdr on one of its functions).
      lib.path = dladdr(reinterpret_cast<void *>(calls.gemm_ex), &info) != 0 && info.dli_fname != nullptr
                     ? info.dli_fname
                     : so;
      return lib;
    }
  for (const std::string &path : candidates())
    if (open(path, &calls, &handle, &why)) {
      lib.calls = &calls, lib.path = path;
      return lib;
    }
  lib.why = "no libcublas.so.13 or .12 by the loader's search, in $CUDA_HOME/lib64, /usr/local/cuda/lib64 or a pip "
            "wheel's nvidia/cublas/lib (set LSOFTMAX_CUBLAS to its path)";
  return lib;
}

}  // namespace

const library &load() {
  static std::once_flag once;
  static library lib;
  std::call_once(once, [] { lib = find(); });
  return lib;
}

std::string describe() {
  const library &lib = load();
  if (lib.calls == nullptr) return "the library's own kernels (cuBLAS: " + lib.why + ")";
  int v[3] = {0, 0, 0};
  for (int i = 0; i < 3; ++i)
    if (lib.calls->get_property(i, &v[i]) != kStatusSuccess) v[i] = -1;
  return "cuBLAS " + std::to_string(v[0]) + "." + std::to_string(v[1]) + "." + std::to_string(v[2]) + " (" + lib.path +
         ")";
}

const char *status_name(int status) {
  switch (status) {
    case 0: return "CUBLAS_STATUS_SUCCESS";
    case 1: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case 3: return "CUBLAS_STATUS_ALLOC_FAILED";
    case 7: return "CUBLAS_STATUS_INVALID_VALUE";
    case 8: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case 11: return "CUBLAS_STATUS_MAPPING_ERROR";
    case 13: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case 14: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case 15: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case 16: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "an unknown cuBLAS status";
  }
}

}  // namespace lsm_blas
