#include "moe/core/arena.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "moe/core/error.h"

namespace moe {

static std::size_t round_up(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

Arena::Arena(std::size_t capacity_bytes) : capacity_(round_up(capacity_bytes)) {
  if (capacity_ == 0) capacity_ = kAlign;
  // Large arenas (PEER's expert tables and their moments reach gigabytes, read at random rows)
  // go on 2 MiB-aligned memory with transparent huge pages requested: far fewer TLB misses.
  constexpr std::size_t kHuge = std::size_t(2) << 20;
  const bool huge = capacity_ >= 16 * kHuge;
  if (huge) capacity_ = (capacity_ + kHuge - 1) / kHuge * kHuge;
  void* p = std::aligned_alloc(huge ? kHuge : kAlign, capacity_);
  MOE_CHECK(p != nullptr, "out of memory allocating an arena of {} bytes", capacity_);
  if (huge) ::madvise(p, capacity_, MADV_HUGEPAGE);  // advisory: failure is harmless
  std::memset(p, 0, capacity_);
  base_ = static_cast<std::byte*>(p);
  storage_.reset(base_);
}

void Arena::Free::operator()(void* p) const { std::free(p); }

void* huge_page_alloc(std::size_t bytes) {
  constexpr std::size_t kHuge = std::size_t(2) << 20;
  const bool huge = bytes >= kHuge;
  const std::size_t align = huge ? kHuge : kAlign;
  const std::size_t size = (std::max<std::size_t>(bytes, 1) + align - 1) / align * align;
  void* p = std::aligned_alloc(align, size);
  MOE_CHECK(p != nullptr, "out of memory allocating {} bytes", size);
  if (huge) ::madvise(p, size, MADV_HUGEPAGE);  // advisory: failure is harmless
  return p;
}

void huge_page_free(void* p) { std::free(p); }

void* Arena::take_bytes(std::size_t bytes) {
  const std::size_t off = used_;
  used_ += round_up(bytes);
  if (base_ == nullptr) return nullptr;
  MOE_CHECK(used_ <= capacity_,
            "arena overflow: {} bytes requested, {} of {} in use (sizing pass disagrees with "
            "allocation pass)",
            bytes, off, capacity_);
  return base_ + off;
}

}  // namespace moe
