// Force-included on Linux into the mlx-c build (C++) and into bindgen (C).
#pragma once

#if !defined(__ARM_FEATURE_FP16_SCALAR_ARITHMETIC) && !defined(__aarch64__)
// mlx-c's half.h declares the float16/bfloat16 accessors only on ARM. Declare
// them with 16-bit storage types elsewhere too: only pointers to them cross the
// C API. For bindgen, __fp16 becomes __BindgenFloat16 and uint16_t becomes u16,
// the types mlx-rs expects (as on macOS).
#include <stdint.h>
#define HAS_FLOAT16
#define HAS_BFLOAT16
#ifdef __cplusplus
typedef uint16_t float16_t;
#else
typedef __fp16 float16_t;
#endif
typedef uint16_t bfloat16_t;
#endif

#if defined(__cplusplus) && !__has_include(<format>)
// mlx-c's private/io.h uses std::format for error messages; libstdc++ before
// GCC 13 (Debian 12, Ubuntu 22.04) has no <format>. Minimal stand-in that
// replaces each "{}" with the next argument.
#include <sstream>
#include <string>
#include <string_view>
namespace std {
template <typename... Args>
string format(string_view fmt, const Args&... args) {
  ostringstream out;
  auto field = [&](const auto& arg) {
    auto at = min(fmt.find("{}"), fmt.size());
    out << fmt.substr(0, at) << arg;
    fmt.remove_prefix(min(at + 2, fmt.size()));
  };
  (field(args), ...);
  out << fmt;
  return out.str();
}
} // namespace std
#elif defined(__cplusplus)
#include <format>
#endif
