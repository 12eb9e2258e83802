# lukv_cpu_kernel_sources(<out> <native dir>): the CPU kernel sources for the target processor, in
# <out>. On x86 the AVX2 and AVX-512 tables are each compiled with their own instruction-set flags
# and chosen at run time; on arm64 the NEON table (no flags: NEON is part of the architecture); on
# any other processor only the portable table. The dispatcher never names a table not built. Used
# by the addon (CMakeLists.txt) and the standalone tests (native/tests/CMakeLists.txt).
function(lukv_cpu_kernel_sources out native)
  set(sources ${native}/cpu/kernels_generic.cpp)
  if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|x86|i[3-6]86)$")
    list(APPEND sources ${native}/cpu/kernels_avx2.cpp ${native}/cpu/kernels_avx512.cpp)
    set_source_files_properties(${native}/cpu/kernels_avx2.cpp PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mf16c")
    set_source_files_properties(${native}/cpu/kernels_avx512.cpp PROPERTIES COMPILE_OPTIONS
      "-mavx512f;-mavx2;-mfma;-mf16c;-Wno-maybe-uninitialized;-Wno-uninitialized")
  elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64|ARM64)$")
    list(APPEND sources ${native}/cpu/kernels_neon.cpp)
  endif()
  set(${out} ${sources} PARENT_SCOPE)
endfunction()

# lukv_core_sources(<out> <native dir>): the core (page table, allocation, cache planning) and the
# CPU backend with its kernel tables: everything both the addon and the native tests link.
function(lukv_core_sources out native)
  lukv_cpu_kernel_sources(kernels ${native})
  set(${out}
    ${native}/core/pool.cpp
    ${native}/core/page_table.cpp
    ${native}/core/allocation.cpp
    ${native}/core/backend.cpp
    ${native}/core/cache.cpp
    ${native}/core/batch.cpp
    ${native}/core/compress.cpp
    ${native}/core/oracle.cpp
    ${native}/core/expected_attention.cpp
    ${native}/core/sequence_file.cpp
    ${native}/core/crc32c.cpp
    ${native}/cpu/cache.cpp
    ${native}/cpu/attention.cpp
    ${native}/cpu/scores.cpp
    ${native}/cpu/statistics.cpp
    ${native}/cpu/compress.cpp
    ${kernels}
    PARENT_SCOPE)
endfunction()
