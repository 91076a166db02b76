// The machine's memory bandwidth, measured: the bound a decode step (which reads every active
// weight once) is compared with. `moe bench qmatmul` and `moe bench infer` report it.
#pragma once

namespace moe {

// STREAM's triad a[i] = b[i] + s·c[i] over three f32 arrays of 64 Mi elements each (768 MiB,
// far beyond any cache), on the OpenMP threads (static split, each thread touches its own part
// first so the pages are local), best of `repeats` passes after one warm-up. GB/s counts 3
// arrays of traffic (2 read, 1 written; the write-allocate read is not counted, as in STREAM).
double measure_triad_gbps(int repeats = 5);

}  // namespace moe
