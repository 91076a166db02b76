#include "moe/core/threading.h"

#include <thread>

#include "moe/core/error.h"

namespace moe {

int machine_threads() {
  const unsigned n = std::thread::hardware_concurrency();  // 0 when it cannot tell
  return n == 0 ? 1 : int(n);
}

void set_threads(int n, std::string_view what) {
  MOE_CHECK(n >= 0, "{}: got {}, expected 0 (the default) or a positive count", what, n);
  if (n == 0) return;
  const int m = machine_threads();
  MOE_CHECK(n <= m,
            "{}: got {}, but this machine has {} hardware thread{}; expected 1 to {} (0 = "
            "the default)",
            what, n, m, m == 1 ? "" : "s", m);
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
}

}  // namespace moe
