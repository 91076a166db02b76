// Expert parallelism's all-to-all (docs/DISTRIBUTED.md): with P ranks, rank q owns experts
// [q·E/P, (q+1)·E/P) (El = E/P local experts). In training each rank sends its rows, sorted by
// expert, to their experts' owners and gets the outputs back (and in backward the d(ye) rows
// out, the dX rows back). An owner lays the rows it receives out as panels, local expert j's
// rows from rank 0, then rank 1, ... (a fixed order, so results do not depend on timing).
//
// Evaluation runs no exchange: every rank routes the same tokens, runs its own experts on
// them, and the partial outputs are summed (sum_partial_outputs).
#pragma once
#include <cstdint>

#include "moe/core/arena.h"
#include "moe/dist/communicator.h"
#include "moe/ffn/moe/experts.h"
#include "moe/ffn/moe/moe_spec.h"

namespace moe {

template <typename T>
class ExpertExchange {
 public:
  explicit ExpertExchange(const MoeSpec& spec) : spec_(spec) {}
  // comm of P ranks (P divides E); E/P local experts on each.
  void set_parallel(Communicator* comm);
  int first_local_expert() const { return rank_ * local_experts_; }
  int local_experts() const { return local_experts_; }
  // The owner panels for up to max_rows routed rows on each of the P ranks.
  void bind(Arena& a, int max_rows);
  // From this rank's rows sorted by expert (offsets [E+1]): the row counts per (rank, local
  // expert), exchanged, and the owner panels' layout. A collective.
  void plan(const int32_t* offsets);
  // This rank's rows [rows, C] in expert order → the owner's panels [panel rows, C].
  void to_owners(const T* rows, T* panels);
  // The owner's panels → the rows in the order this rank sent them.
  void from_owners(const T* panels, T* rows);
  // The owner's panels after plan(): x, gu, hid, ye, dye, by local expert.
  ExpertPanels<T> owner_panels() const;
  T* panel_x() const { return x_; }
  T* panel_y() const { return ye_; }
  T* panel_dy() const { return dye_; }
  // Evaluation: y [n] (in place) summed over ranks (timed as exchange traffic).
  void sum_partial_outputs(T* y, std::size_t n);

  const MoeCommStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 private:
  void exchange(const T* send, T* recv, bool to_owner);

  MoeSpec spec_;
  Communicator* comm_ = nullptr;
  int ranks_ = 1, rank_ = 0, local_experts_ = 0;
  int max_panel_rows_ = 0;
  // Owner panels [P·max_rows, ·] and the receive buffer in arrival order.
  T *arrived_ = nullptr, *x_ = nullptr, *gu_ = nullptr, *hid_ = nullptr, *ye_ = nullptr,
    *dye_ = nullptr;
  int32_t* panel_offsets_ = nullptr;  // [El+1]
  int* send_rows_ = nullptr;          // [P·El] rows to rank r's local expert j
  int* recv_rows_ = nullptr;          // [P·El] rows from rank r for local expert j
  int* block_start_ = nullptr;        // [P·El] first panel row of (source rank r, expert j)
  int64_t *send_total_ = nullptr, *recv_total_ = nullptr;    // [P] rows to / from each rank
  int64_t *send_counts_ = nullptr, *recv_counts_ = nullptr;  // [P] elements (rows·C)
  MoeCommStats stats_;
};

}  // namespace moe
