// The process-wide HDF5 lock. Debian's libhdf5 is built without thread safety, so code that calls HDF5
// from more than one thread (spkv-studio's jobs) holds this mutex around every call, including a reader's
// construction and destruction. Single-threaded tools need not take it.
#pragma once
#include <mutex>

namespace spkv {

inline std::mutex& hdf5_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace spkv
