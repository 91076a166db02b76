#include "moe/ffn/moe/exchange.h"

#include <chrono>
#include <cstring>

#include "moe/core/error.h"

namespace moe {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

template <typename T>
void ExpertExchange<T>::set_parallel(Communicator* comm) {
  comm_ = comm;
  ranks_ = comm ? comm->size() : 1;
  rank_ = comm ? comm->rank() : 0;
  MOE_CHECK(spec_.E % ranks_ == 0,
            "expert parallelism over {} ranks needs num_experts divisible by {}, got {}", ranks_,
            ranks_, spec_.E);
  local_experts_ = spec_.E / ranks_;
}

template <typename T>
void ExpertExchange<T>::bind(Arena& a, int max_rows) {
  // An owner can receive every routed row of the global batch (all of it to its experts).
  const int P = ranks_, El = local_experts_, C = spec_.C, H = spec_.H, W1 = spec_.w1_rows();
  max_panel_rows_ = P * max_rows;
  const std::size_t R = std::size_t(max_panel_rows_);
  arrived_ = a.take<T>(R * C);
  x_ = a.take<T>(R * C);
  gu_ = a.take<T>(R * W1);
  hid_ = a.take<T>(R * H);
  ye_ = a.take<T>(R * C);
  dye_ = a.take<T>(R * C);
  panel_offsets_ = a.take<int32_t>(El + 1);
  send_rows_ = a.take<int>(std::size_t(P) * El);
  recv_rows_ = a.take<int>(std::size_t(P) * El);
  block_start_ = a.take<int>(std::size_t(P) * El);
  send_total_ = a.take<int64_t>(P);
  recv_total_ = a.take<int64_t>(P);
  send_counts_ = a.take<int64_t>(P);
  recv_counts_ = a.take<int64_t>(P);
}

template <typename T>
void ExpertExchange<T>::plan(const int32_t* offsets) {
  // Rows are sorted by expert and experts are owned in contiguous blocks of El, so the rows for
  // rank q are one contiguous range. First the per-(rank, local expert) row counts.
  const int P = ranks_, El = local_experts_;
  const auto t0 = std::chrono::steady_clock::now();
  for (int e = 0; e < spec_.E; ++e) send_rows_[e] = offsets[e + 1] - offsets[e];
  std::fill(recv_rows_, recv_rows_ + std::size_t(P) * El, 0);
  comm_->alltoall(send_rows_, recv_rows_, El);
  stats_.seconds += seconds_since(t0);
  stats_.bytes += double(P - 1) * El * sizeof(int);
  for (int r = 0; r < P; ++r) {
    send_total_[r] = offsets[(r + 1) * El] - offsets[r * El];
    recv_total_[r] = 0;
    for (int j = 0; j < El; ++j) recv_total_[r] += recv_rows_[std::size_t(r) * El + j];
  }
  // Owner panels: local expert j's rows from rank 0, then rank 1, ... (a fixed order).
  panel_offsets_[0] = 0;
  for (int j = 0; j < El; ++j) {
    int64_t m = 0;
    for (int r = 0; r < P; ++r) m += recv_rows_[std::size_t(r) * El + j];
    panel_offsets_[j + 1] = int32_t(panel_offsets_[j] + m);
  }
  MOE_CHECK(panel_offsets_[El] <= max_panel_rows_, "internal: {} received rows exceed the bound {}",
            panel_offsets_[El], max_panel_rows_);
  for (int j = 0; j < El; ++j) {
    int o = panel_offsets_[j];
    for (int r = 0; r < P; ++r) {
      block_start_[std::size_t(r) * El + j] = o;
      o += recv_rows_[std::size_t(r) * El + j];
    }
  }
}

template <typename T>
ExpertPanels<T> ExpertExchange<T>::owner_panels() const {
  ExpertPanels<T> q;
  q.x = x_;
  q.gu = gu_;
  q.hid = hid_;
  q.ye = ye_;
  q.dye = dye_;
  q.offsets = panel_offsets_;
  q.experts = local_experts_;
  return q;
}

template <typename T>
void ExpertExchange<T>::to_owners(const T* rows, T* panels) {
  exchange(rows, panels, true);
}

template <typename T>
void ExpertExchange<T>::from_owners(const T* panels, T* rows) {
  exchange(panels, rows, false);
}

template <typename T>
void ExpertExchange<T>::exchange(const T* send, T* recv, bool to_owner) {
  // to_owner: send = this rank's rows in expert order → recv = the owner's panels.
  // Back: send = the owner's panels → recv = the rows in the order this rank sent them.
  const int P = ranks_, El = local_experts_, C = spec_.C;
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < P; ++r) {
    send_counts_[r] = send_total_[r] * C;
    recv_counts_[r] = recv_total_[r] * C;
  }
  // Arrival order (rank, local expert) ↔ panel blocks; each block is contiguous in both.
  auto blocks = [&](bool into_panels) {
    std::size_t at = 0;
    for (int r = 0; r < P; ++r)
      for (int j = 0; j < El; ++j) {
        const std::size_t b = std::size_t(r) * El + j;
        const std::size_t m = std::size_t(recv_rows_[b]) * C;
        const std::size_t panel_at = std::size_t(block_start_[b]) * C;
        if (into_panels)
          std::memcpy(recv + panel_at, arrived_ + at, m * sizeof(T));
        else
          std::memcpy(arrived_ + at, send + panel_at, m * sizeof(T));
        at += m;
      }
  };
  if (to_owner) {
    comm_->alltoallv(send, send_counts_, arrived_, recv_counts_);
    blocks(true);
  } else {
    blocks(false);
    comm_->alltoallv(arrived_, recv_counts_, recv, send_counts_);
  }
  double sent = 0;
  for (int r = 0; r < P; ++r)
    if (r != rank_) sent += double(to_owner ? send_counts_[r] : recv_counts_[r]) * sizeof(T);
  stats_.bytes += sent;
  stats_.seconds += seconds_since(t0);
}

template <typename T>
void ExpertExchange<T>::sum_partial_outputs(T* y, std::size_t n) {
  const auto t0 = std::chrono::steady_clock::now();
  comm_->allreduce_sum(y, n);
  stats_.seconds += seconds_since(t0);
}

template class ExpertExchange<float>;
template class ExpertExchange<double>;

}  // namespace moe
