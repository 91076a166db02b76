#include "moe/core/arena.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "moe/core/error.h"

namespace moe {

static std::size_t round_up(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

constexpr std::size_t kHuge = std::size_t(2) << 20;

// size rounded up to its alignment (2 MiB if huge, else kAlign) and allocated; huge: with
// transparent huge pages requested before first touch, so random rows miss the TLB far less.
static void* alloc_aligned(std::size_t& size, bool huge, const char* what) {
  const std::size_t align = huge ? kHuge : kAlign;
  size = (size + align - 1) / align * align;
  void* p = std::aligned_alloc(align, size);
  MOE_CHECK(p != nullptr, "out of memory allocating {} of {} bytes", what, size);
  if (huge) ::madvise(p, size, MADV_HUGEPAGE);  // advisory: failure is harmless
  return p;
}

Arena::Arena(std::size_t capacity_bytes) : capacity_(round_up(capacity_bytes)) {
  if (capacity_ == 0) capacity_ = kAlign;
  // Large arenas (PEER's expert tables and their moments reach gigabytes, read at random rows)
  // go on huge pages.
  void* p = alloc_aligned(capacity_, capacity_ >= 16 * kHuge, "an arena");
  std::memset(p, 0, capacity_);
  base_ = static_cast<std::byte*>(p);
  storage_.reset(base_);
}

void Arena::Free::operator()(void* p) const { std::free(p); }

void* huge_page_alloc(std::size_t bytes) {
  std::size_t size = std::max<std::size_t>(bytes, 1);
  return alloc_aligned(size, size >= kHuge, "a buffer");
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
