#include "check.h"
#include "plan.h"
#include "pool.h"

namespace lukv {
namespace cuda {

namespace {
// The arguments are checked before the page bookkeeping is sized from them.
int64_t checkedPages(int64_t numPages, int pageSize, int headDim) {
  checkHeadDim(headDim);
  if (pageSize < 1) throwInvalid("Expected pageSize >= 1 but received " + std::to_string(pageSize));
  if (numPages < 0 || numPages > INT32_MAX)
    throwInvalid("Expected between 0 and 2^31-1 pages but received " + std::to_string(numPages));
  return numPages;
}
}  // namespace

DevicePool::DevicePool(int64_t numPages, int pageSize, int headDim, DType dtype)
    : PageAllocator(checkedPages(numPages, pageSize, headDim)), pageSize_(pageSize), headDim_(headDim), dtype_(dtype) {
  rowBytes_ = (size_t)headDim * dtypeBytes(dtype);
  pageBytes_ = 2 * (size_t)pageSize * rowBytes_;
  bytes_ = (size_t)numPages * pageBytes_;
  if (bytes_ > 0) {
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes_);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      size_t freeB = 0, totalB = 0;
      cudaMemGetInfo(&freeB, &totalB);
      cudaGetLastError();
      throw Error(ErrorCode::OutOfPages, "could not allocate the device page pool (" + std::to_string(bytes_) +
                                             " bytes; the device has " + std::to_string(freeB) + " of " +
                                             std::to_string(totalB) + " bytes free)");
    }
    if (e != cudaSuccess) throwCudaError(e, "cudaMalloc(page pool)", __FILE__, __LINE__);
    data_ = static_cast<uint8_t*>(p);
  }
}

DevicePool::~DevicePool() {
  if (data_) cudaFree(data_);  // a destructor cannot report; nothing else to do on failure
}

PoolView DevicePool::view() const { return poolView(data_, numPages(), pageSize_, headDim_, dtype_); }

}  // namespace cuda
}  // namespace lukv
