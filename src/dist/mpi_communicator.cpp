// Built only when CMake finds MPI (MOE_HAVE_MPI).
#ifdef MOE_HAVE_MPI
#include <mpi.h>

#include <climits>
#include <cstdlib>
#include <vector>

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
  void alltoall(const int* send, int* recv, int n) override {
    MPI_Alltoall(send, n, MPI_INT, recv, n, MPI_INT, MPI_COMM_WORLD);
  }
  void alltoallv(const float* send, const int64_t* sc, float* recv, const int64_t* rc) override {
    exchange(send, sc, recv, rc, MPI_FLOAT);
  }
  void alltoallv(const double* send, const int64_t* sc, double* recv, const int64_t* rc) override {
    exchange(send, sc, recv, rc, MPI_DOUBLE);
  }
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
  // MPI_Alltoallv takes int counts and displacements: checked, not truncated (a rank would
  // need > 2^31 floats of routed rows in one layer to hit it).
  template <typename T>
  void exchange(const T* send, const int64_t* sc, T* recv, const int64_t* rc, MPI_Datatype t) {
    std::vector<int> s(size_), sd(size_), r(size_), rd(size_);
    int64_t so = 0, ro = 0;
    for (int i = 0; i < size_; ++i) {
      MOE_CHECK(so + sc[i] <= INT_MAX && ro + rc[i] <= INT_MAX,
                "all-to-all of more than 2^31 elements per rank is not supported");
      s[i] = int(sc[i]);
      sd[i] = int(so);
      r[i] = int(rc[i]);
      rd[i] = int(ro);
      so += sc[i];
      ro += rc[i];
    }
    MPI_Alltoallv(send, s.data(), sd.data(), t, recv, r.data(), rd.data(), t, MPI_COMM_WORLD);
  }
  int rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(int* argc, char*** argv) {
  return std::make_unique<Mpi>(argc, argv);
}

}  // namespace moe
#endif
