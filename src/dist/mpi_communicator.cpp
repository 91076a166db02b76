// Built only when CMake finds MPI (MOE_HAVE_MPI).
#ifdef MOE_HAVE_MPI
#include <mpi.h>

#include <cstdlib>

#include "moe/core/error.h"
#include "moe/dist/communicator.h"

namespace moe {

namespace {

// Large buffers go in chunks: MPI counts are ints, and chunking bounds the temporary memory.
constexpr std::size_t kChunk = std::size_t(1) << 24;

class Mpi final : public Communicator {
 public:
  Mpi(int* argc, char*** argv) {
    int provided = 0;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    // A failing rank must stop the job with its message, not leave the others waiting.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  ~Mpi() override { MPI_Finalize(); }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void allreduce_sum(float* d, std::size_t n) override { reduce(d, n, MPI_FLOAT, MPI_SUM); }
  void allreduce_sum(double* d, std::size_t n) override { reduce(d, n, MPI_DOUBLE, MPI_SUM); }
  void allreduce_max(double* d, std::size_t n) override { reduce(d, n, MPI_DOUBLE, MPI_MAX); }
  void barrier() override { MPI_Barrier(MPI_COMM_WORLD); }
  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::exit(code);
  }
  std::string describe() const override {
    return "MPI, " + std::to_string(size_) + " ranks (this is rank " + std::to_string(rank_) + ")";
  }

 private:
  template <typename T>
  void reduce(T* d, std::size_t n, MPI_Datatype t, MPI_Op op) {
    for (std::size_t o = 0; o < n; o += kChunk) {
      const int c = int(std::min(kChunk, n - o));
      MPI_Allreduce(MPI_IN_PLACE, d + o, c, t, op, MPI_COMM_WORLD);
    }
  }
  int rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(int* argc, char*** argv) {
  return std::make_unique<Mpi>(argc, argv);
}

}  // namespace moe
#endif
