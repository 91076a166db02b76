// Thread-count queries that also compile without OpenMP.
#pragma once
#include <string_view>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace moe {

// The most threads a flag or config may ask for. libgomp cannot start 100,000 threads (it
// crashed inside the runtime), and per-thread scratch (attention, group-by-key) scales with the
// count; no machine we run on has more than a few hundred hardware threads.
inline constexpr int kMaxThreads = 1024;

// Hardware threads of this machine (at least 1).
int machine_threads();

// Applies a thread count a flag or config field asked for (0 = keep OpenMP's default). More
// threads than the machine has are refused with one line naming `what` (e.g. "--threads" or
// "config: field train.threads"): they only slow every parallel region down, and per-thread
// scratch grows with the count. Results depend on the count, so it is never changed silently.
void set_threads(int n, std::string_view what);

// Threads an OpenMP parallel region started here would use.
inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// This thread's index inside a parallel region (0 outside one).
inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Threads in the calling thread's team (1 outside a parallel region). A region may get fewer
// threads than num_threads asked for (inside another region, with nesting off): code that
// splits work by thread index takes the count from here, not from what it asked for.
inline int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// Whether the caller is inside an active OpenMP parallel region (then nested loops run serially).
inline bool in_parallel() {
#ifdef _OPENMP
  return omp_in_parallel() != 0;
#else
  return false;
#endif
}

// fn(i) for 0 ≤ i < n: shared out statically among a new team when par (and not already inside
// a region), else on the calling thread with no OpenMP construct at all — even `#pragma omp
// parallel if (false)` makes libgomp set up a team of one (allocation, futex traffic), which
// showed in per-expert calls made from inside the expert loop's region.
template <typename F>
void parallel_for_if(int n, bool par, const F& fn) {
  if (!par || in_parallel() || max_threads() == 1) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; ++i) fn(i);
}

}  // namespace moe
