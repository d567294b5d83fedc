// Error-message formatting without iostreams.
//
// c10::str formats numbers through std::ostream, whose locale facets come
// from whichever libstdc++ the process loaded first. When the extension is
// built with a system compiler other than the one that built torch (as on
// our GPU machine: torch 2.11 from gcc-toolset-13, extension from Ubuntu's
// gcc 13.3), formatting an integer in a TORCH_CHECK message segfaulted
// (any cpp_extension; tools/repro_mixed_libstdcxx.py reproduces it). So the
// messages pass only ready-made strings, built with std::to_string.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fibsparse {

inline std::string to_text(int64_t x) { return std::to_string(x); }
inline std::string to_text(double x) { return std::to_string(x); }
inline std::string to_text(at::ScalarType t) { return c10::toString(t); }
inline std::string to_text(const c10::Device& d) { return d.str(); }

inline std::string to_text(c10::IntArrayRef sizes) {
  std::string text = "[";
  for (size_t i = 0; i < sizes.size(); ++i) text += (i ? ", " : "") + std::to_string(sizes[i]);
  return text + "]";
}

inline std::string to_text(const std::vector<int64_t>& sizes) { return to_text(c10::IntArrayRef(sizes)); }

}  // namespace fibsparse
