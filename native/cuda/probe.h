// What the CUDA runtime says about this machine; compiled only when the CUDA backend is built.
#pragma once
#include <string>

namespace lukv {
namespace cuda {

struct ProbeResult {
  bool usable = false;
  int devices = 0;
  int runtimeVersion = 0;
  int driverVersion = 0;
  std::string error;   // why CUDA cannot be used, when it cannot
  std::string names;   // device names, comma separated
};

ProbeResult probe();

}  // namespace cuda
}  // namespace lukv
