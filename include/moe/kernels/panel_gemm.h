// Moved to grouped_gemm.h (issue 15). This forwarding header keeps PEER's include working
// while the PEER restructure lands in parallel; delete it once nothing includes it.
#pragma once
#include "moe/kernels/grouped_gemm.h"
