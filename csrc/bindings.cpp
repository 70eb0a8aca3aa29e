// The Python module ldseg_rt._C: the batched sampler and the Philox noise
// (the latter exposed so tests can compare it with ldseg_rt/philox.py).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <string>
#include <vector>

#include "philox.h"
#include "sampler.h"

namespace py = pybind11;
using namespace ldseg;

namespace {

std::string shape_string(const std::vector<py::ssize_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

std::vector<py::ssize_t> shape_of(const py::array& a) { return {a.shape(), a.shape() + a.ndim()}; }

std::string type_name(const py::handle& obj) { return py::str(obj.get_type().attr("__name__")); }

// A numpy view of buf; the capsule keeps buf alive as long as the array lives.
py::array_t<float> as_array(const FloatBuffer& buf, const std::vector<py::ssize_t>& shape) {
  py::capsule owner(new FloatBuffer(buf), [](void* p) { delete static_cast<FloatBuffer*>(p); });
  return py::array_t<float>(shape, buf->data(), owner);
}

std::vector<uint64_t> to_seeds(const py::object& obj) {
  const py::array seeds = py::array::ensure(obj);
  if (!seeds) throw py::value_error("seeds must be a 1-D array of uint64, got " + type_name(obj));
  if (seeds.ndim() != 1 || seeds.size() == 0)
    throw py::value_error("seeds must be a non-empty 1-D array of uint64, got shape " +
                          shape_string(shape_of(seeds)));
  const char kind = seeds.dtype().kind();
  if (kind != 'u' && kind != 'i')
    throw py::value_error("seeds must be integers (uint64), got dtype " + std::string(py::str(seeds.dtype())));
  if (kind == 'i' && py::array_t<int64_t, py::array::forcecast>::ensure(seeds).attr("min")().cast<int64_t>() < 0)
    throw py::value_error("seeds must be non-negative");
  const auto u = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>::ensure(seeds);
  return {u.data(), u.data() + u.size()};
}

std::vector<Step> to_steps(const py::array_t<double, py::array::c_style | py::array::forcecast>& table) {
  if (table.ndim() != 2 || table.shape(1) != 7 || table.shape(0) < 1)
    throw py::value_error("table must have shape (S, 7) with S >= 1 (t_model, a_t, s_t, c_x0, c_eps, c_z, sigma), got " +
                          shape_string(shape_of(table)));
  const auto r = table.unchecked<2>();
  std::vector<Step> steps;
  for (py::ssize_t i = 0; i < r.shape(0); ++i)
    steps.push_back({r(i, 0), r(i, 1), r(i, 2), r(i, 3), r(i, 4), r(i, 5), r(i, 6)});
  return steps;
}

// Copies the denoiser's result into out, or says what came back instead of the
// expected (B, C, H, W) real array.
void copy_model_output(const py::object& result, const std::vector<py::ssize_t>& shape, std::size_t step,
                       std::vector<float>& out) {
  const std::string expected = "expected a real-valued array of shape " + shape_string(shape) + " (read as float32)";
  const std::string where = "denoiser at step " + std::to_string(step) + " returned ";
  const py::array arr = py::array::ensure(result);
  if (!arr) throw py::value_error(where + type_name(result) + ", which is not an array; " + expected);
  const std::vector<py::ssize_t> got = shape_of(arr);
  const char kind = arr.dtype().kind();
  if (got != shape || (kind != 'f' && kind != 'i' && kind != 'u'))
    throw py::value_error(where + type_name(result) + " of shape " + shape_string(got) + " and dtype " +
                          std::string(py::str(arr.dtype())) + "; " + expected);
  const auto f32 = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(arr);
  if (!f32) throw py::value_error(where + type_name(result) + ", which cannot be read as float32; " + expected);
  std::copy(f32.data(), f32.data() + f32.size(), out.begin());
}

py::array_t<float> sample(const py::function& denoise, const py::object& seeds, int64_t n,
                          const std::vector<int64_t>& latent_shape,
                          const py::array_t<double, py::array::c_style | py::array::forcecast>& table,
                          const std::string& prediction, double clip, bool renormalize, int threads,
                          int64_t first_sample) {
  if (n < 1) throw py::value_error("n must be >= 1, got " + std::to_string(n));
  if (first_sample < 0) throw py::value_error("first_sample must be >= 0, got " + std::to_string(first_sample));
  // (C, H, W) for images, (C, D, H, W) for volumes: the loop itself sees only the element count.
  if (latent_shape.empty() || std::any_of(latent_shape.begin(), latent_shape.end(), [](int64_t d) { return d < 1; }))
    throw py::value_error("latent_shape must be positive ints, e.g. (C, H, W) or (C, D, H, W), got " +
                          shape_string({latent_shape.begin(), latent_shape.end()}));
  // In double, so that absurd shapes cannot overflow before the check.
  double numel = 1.0;
  for (const int64_t d : latent_shape) numel *= static_cast<double>(d);
  if (numel > static_cast<double>(kMaxNumel)) throw py::value_error("latent_shape has more than 2^34 elements");
  if (threads < 0) throw py::value_error("threads must be >= 0 (0: all cores), got " + std::to_string(threads));

  SamplerConfig cfg;
  cfg.seeds = to_seeds(seeds);
  cfg.n = static_cast<std::size_t>(n);
  cfg.first_sample = static_cast<uint64_t>(first_sample);
  cfg.numel = static_cast<std::size_t>(numel);
  cfg.steps = to_steps(table);
  cfg.prediction = parse_prediction(prediction);
  cfg.clip = clip;
  cfg.renormalize = renormalize;
  cfg.threads = static_cast<unsigned>(threads);

  const auto rows = static_cast<py::ssize_t>(cfg.seeds.size() * cfg.n);
  std::vector<py::ssize_t> batch_shape = {rows};
  batch_shape.insert(batch_shape.end(), latent_shape.begin(), latent_shape.end());
  const Denoiser call_model = [&](std::size_t step, const FloatBuffer& z, const FloatBuffer& t,
                                  std::vector<float>& out) {
    py::gil_scoped_acquire gil;
    const py::object result = denoise(as_array(z, batch_shape), as_array(t, {rows}));
    copy_model_output(result, batch_shape, step, out);
  };
  FloatBuffer z;
  {
    py::gil_scoped_release nogil;
    z = run_sampler(cfg, call_model);
  }
  return as_array(z, batch_shape);
}

py::array_t<double> normal(uint64_t seed, uint32_t sample, uint32_t step, uint32_t stream, std::size_t numel) {
  if (numel > kMaxNumel) throw py::value_error("numel must be <= 2^34, got " + std::to_string(numel));
  py::array_t<double> out(static_cast<py::ssize_t>(numel));
  fill_normal(seed, sample, step, stream, out.mutable_data(), numel);
  return out;
}

py::array_t<uint32_t> philox(const py::array_t<uint32_t, py::array::c_style | py::array::forcecast>& counters,
                             const PhiloxKey& key) {
  if (counters.ndim() != 2 || counters.shape(1) != 4)
    throw py::value_error("counters must have shape (N, 4), got " +
                          shape_string(shape_of(counters)));
  py::array_t<uint32_t> out({counters.shape(0), py::ssize_t{4}});
  const uint32_t* in = counters.data();
  uint32_t* dst = out.mutable_data();
  for (py::ssize_t i = 0; i < counters.shape(0); ++i) {
    const PhiloxCounter r = philox4x32({in[4 * i], in[4 * i + 1], in[4 * i + 2], in[4 * i + 3]}, key);
    std::copy(r.begin(), r.end(), dst + 4 * i);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "C++ core of ldseg_rt: the batched diffusion sampling loop and its Philox4x32-10 noise.";
  m.attr("STREAM_INIT") = kStreamInit;
  m.attr("STREAM_STEP") = kStreamStep;
  m.attr("RENORM_EPS") = kRenormEps;
  m.attr("PREDICTIONS") = py::tuple(py::cast(std::vector<std::string>(kPredictionNames.begin(), kPredictionNames.end())));
  m.attr("TABLE_COLUMNS") = py::tuple(py::cast(std::vector<std::string>(kTableColumns.begin(), kTableColumns.end())));

  m.def("sample", &sample, py::arg("denoise"), py::arg("seeds"), py::arg("n"), py::arg("latent_shape"),
        py::arg("table"), py::arg("prediction"), py::arg("clip"), py::arg("renormalize"), py::arg("threads"),
        py::arg("first_sample") = 0,
        R"doc(Samples n latents per seed; returns float32 (len(seeds)*n, C, H, W).

denoise(z, t) is called once per step with the whole batch: z float32 (B, C, H, W),
t float32 (B,); it must return an array convertible to float32 of shape (B, C, H, W).
Row b is sample k = first_sample + b % n of image b // n, with noise keyed by
(seeds[b // n], k): a draw split into chunks of samples gives the samples of one call.
table is float64 (S, 7): [t_model, a_t, s_t, c_x0, c_eps, c_z, sigma] per step, run in
order. prediction is 'eps', 'x' or 'v'; clip <= 0 disables clamping x0; renormalize
rescales each row to zero mean, unit variance after every update; threads = 0 uses
all cores. The result does not depend on the thread count.)doc");

  m.def("normal", &normal, py::arg("seed"), py::arg("sample"), py::arg("step"), py::arg("stream"),
        py::arg("numel"), "Standard normals (float64, numel) of the draw (seed, sample, step, stream).");

  m.def("philox4x32", &philox, py::arg("counters"), py::arg("key"),
        "Philox4x32-10 of uint32 counters (N, 4) under key (k0, k1); returns uint32 (N, 4).");
}
