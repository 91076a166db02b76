#include "moe/dist/communicator.h"

#include <algorithm>

#include "moe/core/error.h"

namespace moe {

namespace {

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void allreduce_sum(float*, std::size_t) override {}
  void allreduce_sum(double*, std::size_t) override {}
  void allreduce_max(double*, std::size_t) override {}
  void barrier() override {}
  void alltoall(const int* send, int* recv, int n) override { std::copy(send, send + n, recv); }
  void alltoallv(const float* send, const int64_t* sc, float* recv, const int64_t*) override {
    std::copy(send, send + sc[0], recv);
  }
  void alltoallv(const double* send, const int64_t* sc, double* recv, const int64_t*) override {
    std::copy(send, send + sc[0], recv);
  }
  [[noreturn]] void abort(int code) override { std::exit(code); }
  std::string describe() const override { return "single process"; }
};

}  // namespace

std::unique_ptr<Communicator> make_single_process_communicator() {
  return std::make_unique<SingleProcess>();
}

#ifdef MOE_HAVE_MPI
std::unique_ptr<Communicator> make_mpi_communicator(int* argc, char*** argv);
#endif

std::unique_ptr<Communicator> make_communicator(int* argc, char*** argv, bool launched) {
#ifdef MOE_HAVE_MPI
  if (launched) return make_mpi_communicator(argc, argv);
#else
  MOE_CHECK(!launched,
            "launched by mpirun, but this moe was built without MPI: apt-get install "
            "libopenmpi-dev openmpi-bin and rebuild");
#endif
  return make_single_process_communicator();
}

bool same_on_all_ranks(Communicator& c, uint64_t value) {
  const double v = double(value % (1ull << 52));  // exact in a double
  double mm[2] = {v, -v};
  c.allreduce_max(mm, 2);
  return mm[0] == -mm[1];
}

Communicator& single_process_communicator() {
  static const std::unique_ptr<Communicator> alone = make_single_process_communicator();
  return *alone;
}

}  // namespace moe
