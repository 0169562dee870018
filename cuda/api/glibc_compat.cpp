// The static libstdc++ linked into the library refers to arc4random (glibc 2.36) from
// std::random_device, which the library never uses. Defining it here, hidden like every symbol
// but the ABI, keeps the library loadable on glibc 2.35 (Ubuntu 22.04): the oldest it needs is then
// set by the unwinder's _dl_find_object (2.35). The definition is a correct one all the same.
#include <sys/random.h>
#include <time.h>

#include <cerrno>
#include <cstdint>

extern "C" uint32_t arc4random(void) {
  uint32_t value = 0;
  for (;;) {
    ssize_t got = getrandom(&value, sizeof value, 0);
    if (got == static_cast<ssize_t>(sizeof value)) return value;
    if (got < 0 && errno != EINTR) break;
  }
  // getrandom unavailable (a kernel before 3.17): mix the clock, splitmix64's finaliser.
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  uint64_t z = static_cast<uint64_t>(now.tv_sec) * 1000000007u + static_cast<uint64_t>(now.tv_nsec);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return static_cast<uint32_t>(z ^ (z >> 31));
}
