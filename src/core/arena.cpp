#include "moe/core/arena.h"

#include <cstdlib>
#include <cstring>

#include "moe/core/error.h"

namespace moe {

static std::size_t round_up(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

Arena::Arena(std::size_t capacity_bytes) : capacity_(round_up(capacity_bytes)) {
  if (capacity_ == 0) capacity_ = kAlign;
  void* p = std::aligned_alloc(kAlign, capacity_);
  MOE_CHECK(p != nullptr, "out of memory allocating an arena of {} bytes", capacity_);
  std::memset(p, 0, capacity_);
  base_ = static_cast<std::byte*>(p);
  storage_.reset(base_);
}

void Arena::Free::operator()(void* p) const { std::free(p); }

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
