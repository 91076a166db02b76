// The process's communicator, which only the command line holds: main() makes it once (MPI when
// mpirun started the process, else a single process) and each subcommand passes it down to what
// it runs (Trainer, sweeps, comparisons, models). Nothing below cli/ fetches it.
#pragma once
#include <memory>

#include "moe/dist/communicator.h"

namespace moe::cli {

// True when mpirun (Open MPI, or a PMI launcher) started this process: it sets these variables.
bool launched_by_mpirun();

Communicator& world();
void set_world(std::unique_ptr<Communicator> c);

}  // namespace moe::cli
