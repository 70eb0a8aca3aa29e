// The constants that the C++ sampler, the float64 oracle and the Triton step kernel must
// share. This header is their one source: the extension exports each of them (_C.STREAM_INIT,
// ...) and ldseg_rt.diffusion.constants reads them from there.
#pragma once

#include <array>
#include <cstdint>

namespace ldseg {

// The counter's fourth word: which draw of a sample the noise belongs to.
constexpr uint32_t kStreamInit = 0;  // the initial latent z_T (step 0)
constexpr uint32_t kStreamStep = 1;  // the noise added by loop iteration `step`

// LDSeg's renormalisation after every step: (z - mean) / (std + kRenormEps).
constexpr double kRenormEps = 1e-5;

// What a denoiser may predict, in the order of the Prediction enum.
constexpr std::array<const char*, 3> kPredictionNames = {"eps", "x", "v"};

// The columns of a step table, in the order of the Step struct's fields.
constexpr std::array<const char*, 7> kTableColumns = {"t_model", "a_t", "s_t", "c_x0", "c_eps", "c_z", "sigma"};

}  // namespace ldseg
