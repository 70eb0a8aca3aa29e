#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <stdexcept>
#include <thread>

#include "philox.h"

namespace ldseg {

Prediction parse_prediction(const std::string& name) {
  for (std::size_t i = 0; i < kPredictionNames.size(); ++i)
    if (name == kPredictionNames[i]) return static_cast<Prediction>(i);
  throw std::invalid_argument("prediction must be 'eps', 'x' or 'v', got '" + name + "'");
}

namespace {

constexpr uint64_t kMaxCounterWord = uint64_t{1} << 32;

void validate(const SamplerConfig& cfg) {
  if (cfg.seeds.empty()) throw std::invalid_argument("seeds must not be empty");
  if (cfg.n < 1 || cfg.n > kMaxCounterWord)
    throw std::invalid_argument("n must be in [1, 2^32], got " + std::to_string(cfg.n));
  if (cfg.first_sample > kMaxCounterWord - cfg.n)
    throw std::invalid_argument("sample indices must stay below 2^32, got first_sample " +
                                std::to_string(cfg.first_sample) + " with n " + std::to_string(cfg.n));
  if (cfg.numel < 1 || cfg.numel > kMaxNumel)
    throw std::invalid_argument("a latent must have between 1 and 2^34 elements, got " +
                                std::to_string(cfg.numel));
  if (cfg.seeds.size() > std::numeric_limits<std::ptrdiff_t>::max() / sizeof(double) / cfg.n / cfg.numel)
    throw std::invalid_argument("the batch is too large");
  if (cfg.steps.empty() || cfg.steps.size() > kMaxCounterWord)
    throw std::invalid_argument("the table must have between 1 and 2^32 steps, got " +
                                std::to_string(cfg.steps.size()));
  if (std::isnan(cfg.clip)) throw std::invalid_argument("clip must not be NaN");
  for (std::size_t i = 0; i < cfg.steps.size(); ++i) {
    const Step& st = cfg.steps[i];
    const std::string where = "table row " + std::to_string(i) + ": ";
    for (double v : {st.t_model, st.a, st.s, st.c_x0, st.c_eps, st.c_z, st.sigma})
      if (!std::isfinite(v)) throw std::invalid_argument(where + "all entries must be finite");
    if (st.a < 0 || st.s < 0) throw std::invalid_argument(where + "a_t and s_t must be >= 0");
    if (cfg.prediction == Prediction::Eps && st.a <= 0)
      throw std::invalid_argument(where + "eps prediction needs a_t > 0, got " + std::to_string(st.a));
  }
}

struct RowId {
  uint64_t seed;
  uint32_t sample;
};

RowId row_id(const SamplerConfig& cfg, std::size_t row) {
  return {cfg.seeds[row / cfg.n], static_cast<uint32_t>(cfg.first_sample + row % cfg.n)};
}

// Runs fn(row) for every row, splitting the rows into contiguous chunks, one per
// thread. Each row is computed by one thread alone, so the result does not
// depend on the thread count.
template <class RowFn>
void for_each_row(std::size_t rows, unsigned threads, const RowFn& fn) {
  const std::size_t workers = std::min<std::size_t>(threads, rows);
  const auto run_chunk = [&](std::size_t w) {
    for (std::size_t row = w * rows / workers; row < (w + 1) * rows / workers; ++row) fn(row);
  };
  std::vector<std::thread> pool;
  for (std::size_t w = 1; w < workers; ++w) pool.emplace_back(run_chunk, w);
  run_chunk(0);
  for (std::thread& t : pool) t.join();
}

double eps_from_x0(const Step& st, double z, double x0) { return st.s > 0 ? (z - st.a * x0) / st.s : 0.0; }

// One step of the update for one row: model output -> (x0, eps) -> new z.
void advance_row(const SamplerConfig& cfg, uint32_t step, RowId id, double* z, const float* out) {
  const Step& st = cfg.steps[step];
  std::vector<double> noise;
  if (st.sigma != 0.0) {
    noise.resize(cfg.numel);
    fill_normal(id.seed, id.sample, step, kStreamStep, noise.data(), cfg.numel);
  }
  for (std::size_t e = 0; e < cfg.numel; ++e) {
    const double zi = z[e], o = out[e];
    double x0 = 0.0, eps = 0.0;
    switch (cfg.prediction) {
      case Prediction::Eps:
        eps = o;
        x0 = (zi - st.s * eps) / st.a;
        break;
      case Prediction::X:
        x0 = o;
        eps = eps_from_x0(st, zi, x0);
        break;
      case Prediction::V:
        x0 = st.a * zi - st.s * o;
        eps = st.s * zi + st.a * o;
        break;
    }
    if (cfg.clip > 0) {
      x0 = std::clamp(x0, -cfg.clip, cfg.clip);
      eps = eps_from_x0(st, zi, x0);
    }
    double next = st.c_x0 * x0 + st.c_eps * eps + st.c_z * zi;
    if (st.sigma != 0.0) next += st.sigma * noise[e];
    z[e] = next;
  }
}

// Zero mean, unit (population) variance; kRenormEps guards a constant row.
void renormalize_row(double* z, std::size_t numel) {
  double mean = 0.0;
  for (std::size_t e = 0; e < numel; ++e) mean += z[e];
  mean /= static_cast<double>(numel);
  double var = 0.0;
  for (std::size_t e = 0; e < numel; ++e) var += (z[e] - mean) * (z[e] - mean);
  const double scale = 1.0 / (std::sqrt(var / static_cast<double>(numel)) + kRenormEps);
  for (std::size_t e = 0; e < numel; ++e) z[e] = (z[e] - mean) * scale;
}

// Common tail of every update: optional renormalisation, then the float32 copy
// that the denoiser (or the caller, after the last step) sees.
void finish_row(const SamplerConfig& cfg, double* z, float* z32) {
  if (cfg.renormalize) renormalize_row(z, cfg.numel);
  std::transform(z, z + cfg.numel, z32, [](double v) { return static_cast<float>(v); });
}

}  // namespace

FloatBuffer run_sampler(const SamplerConfig& cfg, const Denoiser& denoise) {
  validate(cfg);
  const std::size_t rows = cfg.seeds.size() * cfg.n, numel = cfg.numel;
  const unsigned threads = cfg.threads > 0 ? cfg.threads : std::max(1u, std::thread::hardware_concurrency());

  std::vector<double> z(rows * numel);
  std::vector<float> out(rows * numel);
  FloatBuffer z32 = std::make_shared<std::vector<float>>(rows * numel);
  for_each_row(rows, threads, [&](std::size_t row) {
    const RowId id = row_id(cfg, row);
    fill_normal(id.seed, id.sample, 0, kStreamInit, &z[row * numel], numel);
    finish_row(cfg, &z[row * numel], &(*z32)[row * numel]);
  });

  for (std::size_t i = 0; i < cfg.steps.size(); ++i) {
    const auto t = std::make_shared<std::vector<float>>(rows, static_cast<float>(cfg.steps[i].t_model));
    denoise(i, z32, t, out);
    if (!std::all_of(out.begin(), out.end(), [](float v) { return std::isfinite(v); }))
      throw std::invalid_argument("the denoiser output at step " + std::to_string(i) +
                                  " (t_model=" + std::to_string(cfg.steps[i].t_model) +
                                  ") contains NaN or infinity");
    z32 = std::make_shared<std::vector<float>>(rows * numel);
    for_each_row(rows, threads, [&](std::size_t row) {
      advance_row(cfg, static_cast<uint32_t>(i), row_id(cfg, row), &z[row * numel], &out[row * numel]);
      finish_row(cfg, &z[row * numel], &(*z32)[row * numel]);
    });
  }
  return z32;
}

}  // namespace ldseg
