# lukv_enable_cuda(<out> <default architectures>): finds nvcc (on PATH, or /usr/local/cuda/bin when
# it is not) and enables CUDA with the static runtime; sets <out> to ON when it did, OFF otherwise.
# CMAKE_CUDA_ARCHITECTURES, when given, wins over the default. A macro, because enable_language()
# must run at file scope. Used by the addon (CMakeLists.txt) and the standalone GPU tests
# (native/tests/CMakeLists.txt).
macro(lukv_enable_cuda out default_architectures)
  set(${out} OFF)
  include(CheckLanguage)
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES "${default_architectures}")
    endif()
    set(CMAKE_CUDA_RUNTIME_LIBRARY Static)
    enable_language(CUDA)
    set(${out} ON)
  endif()
endmacro()
