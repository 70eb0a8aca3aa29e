// The batched diffusion sampling loop, free of Python: the denoiser is a
// callback, which bindings.cpp implements with a Python callable.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace ldseg {

// What the network predicts: the noise, the clean latent, or v = a_t*eps - s_t*x0
// (named by kPredictionNames, in this order).
enum class Prediction { Eps, X, V };

// Parses "eps", "x" or "v"; throws std::invalid_argument otherwise.
Prediction parse_prediction(const std::string& name);

// One row of the step table; the rows are run in order (high noise first).
struct Step {
  double t_model;  // time handed to the denoiser
  double a;        // sqrt(alpha_bar_t)
  double s;        // sqrt(1 - alpha_bar_t)
  double c_x0, c_eps, c_z, sigma;  // z <- c_x0*x0 + c_eps*eps + c_z*z + sigma*noise
};

struct SamplerConfig {
  std::vector<uint64_t> seeds;  // one per image; batch row b is sample first_sample + b % n of image b / n
  std::size_t n = 1;            // samples per image
  uint64_t first_sample = 0;    // index of each image's first sample: later chunks of one draw start there
  std::size_t numel = 0;        // elements of one latent (C*H*W, row-major)
  std::vector<Step> steps;
  Prediction prediction = Prediction::Eps;
  double clip = 0.0;            // clamp x0 to [-clip, clip]; <= 0 disables
  bool renormalize = false;     // zero mean, unit variance per row after every update
  unsigned threads = 0;         // 0: std::thread::hardware_concurrency()
};

// Float32 batches handed out of the loop. Each step gets a fresh buffer, shared
// so that arrays wrapping it stay valid (and unchanged) if a caller keeps them.
using FloatBuffer = std::shared_ptr<std::vector<float>>;

// Runs the model once for the whole batch: z holds rows*numel values, t holds
// one time per row; the model output (rows*numel values) goes to out, which
// already has that size. Exceptions propagate out of run_sampler.
using Denoiser = std::function<void(std::size_t step, const FloatBuffer& z, const FloatBuffer& t,
                                    std::vector<float>& out)>;

// Samples seeds.size()*n latents and returns them as float32 (rows*numel).
// The state is kept in double; the row math runs on cfg.threads threads and is
// bit-identical whatever their number. Throws std::invalid_argument for a bad
// config or a non-finite model output.
FloatBuffer run_sampler(const SamplerConfig& cfg, const Denoiser& denoise);

}  // namespace ldseg
