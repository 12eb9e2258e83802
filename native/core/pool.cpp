#include "pool.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "errors.h"

namespace lukv {

PagePool::PagePool(int64_t numPages, int pageSize, int headDim, DType dtype)
    : PageAllocator(numPages), pageSize_(pageSize), headDim_(headDim), dtype_(dtype) {
  rowBytes_ = (size_t)headDim * dtypeBytes(dtype);
  pageBytes_ = 2 * (size_t)pageSize * rowBytes_;
  const size_t total = (size_t)numPages * pageBytes_;  // allocateStreamed rounds it up to whole lines
  data_ = static_cast<uint8_t*>(allocateStreamed(total));
  bytes_ = total;
  if (!data_) throw Error(ErrorCode::OutOfPages, "could not allocate the page pool (" + std::to_string(total) + " bytes)");
}

namespace {
constexpr size_t kHuge = size_t(2) << 20;
size_t streamedSize(size_t bytes) { return bytes >= kHuge ? (bytes + kHuge - 1) / kHuge * kHuge : (bytes + 63) / 64 * 64; }
}  // namespace

void* allocateStreamed(size_t bytes) {
  // Anonymous memory is mapped lazily, so untouched pages cost no resident memory. Buffers of 2 MiB
  // or more are aligned to 2 MiB and offered to the kernel as transparent huge pages: attention
  // streams the pool, and with 4 KiB pages every page of K or V is also a TLB miss and a restart for
  // the hardware prefetchers. On Linux they are mapped directly (not from the C heap, which may keep
  // a freed block of up to 32 MiB for reuse), so that freeing one gives its memory back at once.
  const size_t total = streamedSize(bytes);
#if defined(__linux__)
  if (bytes >= kHuge) {
    void* m = mmap(nullptr, total + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    // Keep the 2 MiB-aligned part, unmap the slack before and after it.
    const uintptr_t start = reinterpret_cast<uintptr_t>(m), aligned = (start + kHuge - 1) / kHuge * kHuge;
    if (aligned > start) munmap(m, aligned - start);
    if (start + kHuge > aligned) munmap(reinterpret_cast<void*>(aligned + total), start + kHuge - aligned);
    void* p = reinterpret_cast<void*>(aligned);
#if defined(MADV_HUGEPAGE)
    madvise(p, total, MADV_HUGEPAGE);  // advice only: failure changes nothing
#endif
    return p;
  }
#endif
  return std::aligned_alloc(bytes >= kHuge ? kHuge : 64, total > 0 ? total : 64);
}

void freeStreamed(void* p, size_t bytes) {
  if (!p) return;
#if defined(__linux__)
  if (bytes >= kHuge) {
    munmap(p, streamedSize(bytes));
    return;
  }
#endif
  std::free(p);
}

PagePool::~PagePool() { freeStreamed(data_, bytes_); }

int64_t PagePool::releaseFree() {
#if defined(__linux__)
  if (bytes_ < kHuge) return 0;  // a block of the C heap (see allocateStreamed): left to it
  const uintptr_t os = (uintptr_t)sysconf(_SC_PAGESIZE);
  const uintptr_t base = reinterpret_cast<uintptr_t>(data_);
  // [begin, end) of the pool, shrunk to whole pages of the OS: the bytes of it that were resident
  // (mincore), which the advice gives back.
  std::vector<unsigned char> resident;
  auto release = [&](uintptr_t begin, uintptr_t end) -> int64_t {
    begin = (begin + os - 1) / os * os;
    end = end / os * os;
    if (end <= begin) return 0;
    void* p = reinterpret_cast<void*>(begin);
    resident.assign((end - begin) / os, 0);
    int64_t bytes = 0;
    if (mincore(p, end - begin, resident.data()) == 0)
      for (unsigned char r : resident) bytes += (r & 1) ? (int64_t)os : 0;
    return madvise(p, end - begin, MADV_DONTNEED) == 0 ? bytes : 0;
  };
  std::vector<int32_t> ids = returnedPages();
  std::sort(ids.begin(), ids.end());
  int64_t released = 0;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i + 1;
    while (j < ids.size() && ids[j] == ids[j - 1] + 1) ++j;  // a run of consecutive free pages
    released += release(base + (size_t)ids[i] * pageBytes_, base + (size_t)(ids[j - 1] + 1) * pageBytes_);
    i = j;
  }
  // Pages never handed out hold nothing, but the huge page that the last used one shares with them
  // may have been faulted in whole.
  released += release(base + (size_t)touchedPages() * pageBytes_, base + streamedSize(bytes_));
  return released;
#else
  return 0;
#endif
}

}  // namespace lukv
