// The one interface the trainer uses to talk to other processes. Single-process and MPI
// implementations; `moe` picks MPI when it was built with it and launched by mpirun
// (OMPI_COMM_WORLD_SIZE / PMI_SIZE set), else the single-process one.
// Every collective is called by every rank in the same order, with the same sizes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace moe {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: every rank ends with the element-wise sum (the same bits on every rank).
  virtual void allreduce_sum(float* data, std::size_t n) = 0;
  virtual void allreduce_sum(double* data, std::size_t n) = 0;
  virtual void allreduce_max(double* data, std::size_t n) = 0;
  virtual void barrier() = 0;
  // Personalised exchange (expert parallelism). alltoall: n ints to every rank, n from every
  // rank (send/recv [size·n], block r goes to / came from rank r). alltoallv: send_counts[r]
  // elements (rank-ordered contiguous blocks of send) go to rank r; recv_counts[r] arrive from
  // rank r into rank-ordered contiguous blocks of recv. Counts in elements.
  virtual void alltoall(const int* send, int* recv, int n) = 0;
  virtual void alltoallv(const float* send, const int64_t* send_counts, float* recv,
                         const int64_t* recv_counts) = 0;
  virtual void alltoallv(const double* send, const int64_t* send_counts, double* recv,
                         const int64_t* recv_counts) = 0;
  // Ends every rank of the job at once (a failing rank must not leave the others waiting in a
  // collective). Does not return.
  [[noreturn]] virtual void abort(int code) = 0;
  virtual std::string describe() const = 0;
  bool is_root() const { return rank() == 0; }
};

// True on every rank iff every rank passed the same value (compared in 52 bits: max(v) and
// max(−v) over the ranks in one all-reduce). A collective.
bool same_on_all_ranks(Communicator& c, uint64_t value);

std::unique_ptr<Communicator> make_single_process_communicator();
// MPI when `launched` (the process was started by mpirun: the caller reads that from the
// launcher's environment) and built in; calls MPI_Init (and MPI_Finalize at exit). Otherwise a
// single process; launched without MPI built in is an error.
std::unique_ptr<Communicator> make_communicator(int* argc, char*** argv, bool launched);

// A communicator of one process (rank 0 of 1, every collective a no-op): what a model that runs
// or trains alone is given. Holds no state, so sharing the one instance is harmless.
Communicator& single_process_communicator();

}  // namespace moe
