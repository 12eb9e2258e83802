// Errors raised by the core; the addon turns them into the typed TypeScript errors.
#pragma once
#include <stdexcept>
#include <string>

namespace lukv {

// OutOfPages: the page pool lacks pages (or cannot be made); OutOfMemory: memory a call needs besides
// the pool (host memory, a device's staging and workspace buffers) could not be allocated.
enum class ErrorCode { InvalidArgument, OutOfPages, OutOfMemory, Disposed, BackendUnavailable, Internal, BadSequenceFile };

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }
  const char* codeName() const {
    switch (code_) {
      case ErrorCode::InvalidArgument: return "ERR_LUKV_INVALID_ARGUMENT";
      case ErrorCode::OutOfPages: return "ERR_LUKV_OUT_OF_PAGES";
      case ErrorCode::OutOfMemory: return "ERR_LUKV_OUT_OF_MEMORY";
      case ErrorCode::Disposed: return "ERR_LUKV_DISPOSED";
      case ErrorCode::BackendUnavailable: return "ERR_LUKV_BACKEND_UNAVAILABLE";
      case ErrorCode::BadSequenceFile: return "ERR_LUKV_BAD_SEQUENCE_FILE";
      default: return "ERR_LUKV_INTERNAL";
    }
  }

 private:
  ErrorCode code_;
};

[[noreturn]] inline void throwInvalid(const std::string& m) { throw Error(ErrorCode::InvalidArgument, m); }

}  // namespace lukv
