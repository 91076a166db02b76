// One aligned allocation per class of memory (parameters, gradients, optimizer state,
// activations), with pointers carved out of it. Sizing is done by running the same carving code
// twice: first against a measuring arena (no memory, only a running total), then against the
// real one. So the size can never drift from what the code takes, and nothing is allocated
// inside a training step.
#pragma once
#include <cstddef>
#include <memory>
#include <new>
#include <vector>

namespace moe {

inline constexpr std::size_t kAlign = 64;  // one cache line, one AVX-512 register

// Memory for a std::vector read at random rows (PEER's per-row step counts: one int per expert,
// 4 MiB at 2^20 experts): from 2 MiB on it is 2 MiB-aligned with transparent huge pages asked
// for before first touch, as the large arenas are, so that each random access does not miss the
// TLB on its own 4 KiB page.
void* huge_page_alloc(std::size_t bytes);
void huge_page_free(void* p);
template <typename T>
struct HugePageAllocator {
  using value_type = T;
  HugePageAllocator() = default;
  template <typename U>
  HugePageAllocator(const HugePageAllocator<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(huge_page_alloc(n * sizeof(T))); }
  void deallocate(T* p, std::size_t) { huge_page_free(p); }
  template <typename U>
  bool operator==(const HugePageAllocator<U>&) const {
    return true;
  }
};

// A std::vector allocator aligned to kAlign. For buffers the AVX-512 kernels stream through in
// 64-byte rows (packed bf16 panels, rows read by the packers): malloc aligns to 16 only, and large
// blocks come from mmap 16 bytes past a page, so a 64-byte row there spans two cache lines on
// every load and store — and where smaller blocks land depends on everything allocated before.
template <typename T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U>&) {}
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kAlign)));
  }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(kAlign)); }
  template <typename U>
  bool operator==(const AlignedAllocator<U>&) const {
    return true;
  }
};
template <typename T>
using AlignedVector = std::vector<T, AlignedAllocator<T>>;

class Arena {
 public:
  Arena() = default;  // measuring arena: take() returns nullptr and counts
  explicit Arena(std::size_t capacity_bytes);
  Arena(Arena&&) = default;
  Arena& operator=(Arena&&) = default;

  // n elements of T, aligned to kAlign, zero-initialised on first allocation.
  template <typename T>
  T* take(std::size_t n) {
    return static_cast<T*>(take_bytes(n * sizeof(T)));
  }
  void* take_bytes(std::size_t bytes);

  bool measuring() const { return base_ == nullptr; }
  std::size_t used() const { return used_; }
  std::size_t capacity() const { return capacity_; }
  void reset() { used_ = 0; }

 private:
  struct Free {
    void operator()(void* p) const;
  };
  std::unique_ptr<std::byte, Free> storage_;
  std::byte* base_ = nullptr;
  std::size_t capacity_ = 0;
  std::size_t used_ = 0;
};

}  // namespace moe
