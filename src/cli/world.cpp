#include "world.h"

#include <cstdlib>

namespace moe::cli {

namespace {
std::unique_ptr<Communicator>& world_ptr() {
  static std::unique_ptr<Communicator> w = make_single_process_communicator();
  return w;
}
}  // namespace

bool launched_by_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK");
}

Communicator& world() { return *world_ptr(); }
void set_world(std::unique_ptr<Communicator> c) { world_ptr() = std::move(c); }

}  // namespace moe::cli
