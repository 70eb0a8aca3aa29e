// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3")
// and the Box-Muller transform that turns its output into standard normals.
//
// Noise is counter-based: the value for element e of a latent is a pure function
// of (seed, sample, step, stream, e), so any row of any batch can be generated
// independently, in any order, on any thread. ldseg_rt/diffusion/philox.py mirrors this.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "constants.h"

namespace ldseg {

using PhiloxCounter = std::array<uint32_t, 4>;
using PhiloxKey = std::array<uint32_t, 2>;

// Element e is lane e % 4 of block e / 4, and the block index is a 32-bit word.
constexpr std::size_t kMaxNumel = std::size_t{1} << 34;

inline PhiloxCounter philox4x32(PhiloxCounter c, PhiloxKey k) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k[0] += kW0;
      k[1] += kW1;
    }
    const uint64_t p0 = uint64_t{kM0} * c[0];
    const uint64_t p1 = uint64_t{kM1} * c[2];
    c = PhiloxCounter{static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k[0], static_cast<uint32_t>(p1),
                      static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k[1], static_cast<uint32_t>(p0)};
  }
  return c;
}

inline PhiloxKey philox_key(uint64_t seed) {
  return {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
}

// Two normals from two raw words. The +0.5 keeps u strictly inside (0, 1), so
// log(u_radius) is finite.
inline std::array<double, 2> box_muller(uint32_t r_radius, uint32_t r_angle) {
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  const double u_radius = (static_cast<double>(r_radius) + 0.5) * 0x1p-32;
  const double u_angle = (static_cast<double>(r_angle) + 0.5) * 0x1p-32;
  const double radius = std::sqrt(-2.0 * std::log(u_radius));
  const double theta = kTwoPi * u_angle;
  return {radius * std::cos(theta), radius * std::sin(theta)};
}

// Writes the standard normals of elements [0, numel) of the draw
// (seed, sample, step, stream) to out. Requires numel <= kMaxNumel.
inline void fill_normal(uint64_t seed, uint32_t sample, uint32_t step, uint32_t stream, double* out,
                        std::size_t numel) {
  const PhiloxKey key = philox_key(seed);
  for (std::size_t first = 0; first < numel; first += 4) {
    const PhiloxCounter r = philox4x32({static_cast<uint32_t>(first / 4), step, sample, stream}, key);
    const auto lo = box_muller(r[0], r[1]);
    const auto hi = box_muller(r[2], r[3]);
    const double lanes[4] = {lo[0], lo[1], hi[0], hi[1]};
    for (std::size_t lane = 0; lane < 4 && first + lane < numel; ++lane) out[first + lane] = lanes[lane];
  }
}

}  // namespace ldseg
