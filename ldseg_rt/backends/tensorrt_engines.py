"""TensorRT engines from a bundle's ONNX graphs: the build, and the cache inside the bundle.

An engine is specific to the GPU model, the TensorRT version and the precision it was built
for, and building one takes minutes, so engines are built on first use and kept under
NAME.ldseg/engines/<gpu>-<sm_XY>-trt<version>-<precision>/: one folder per such triple, so a
bundle on a shared disk serves several kinds of GPU. Beside each <network>.plan is
<network>.json, the key it was built for (graph sha256, batch profile, precision, build recipe,
TensorRT version, GPU, bundle format); a plan is reused only when its key still holds, and a
rebuild says why. The TensorRT module is a parameter, not an import, so the build runs under any
TensorRT flavour (the tests use TensorRT-RTX, which builds without a GPU).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import warnings
from collections import defaultdict, deque
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

import torch

from ..bundle import Bundle, sha256
from ..errors import BackendError, InvalidArgumentError
from ..io.atomic import replacing

log = logging.getLogger(__name__)

# TensorRT >= 10.1 (execute_async_v3, set_input_shape, user-managed context memory) and < 11.
# TensorRT 11 builds only strongly typed networks: it removed BuilderFlag.FP16,
# OBEY_PRECISION_CONSTRAINTS and per-layer precisions, and takes fp16 from casts in the ONNX graph
# (NVIDIA's migration guide: convert with ModelOpt AutoCast first). The bundles carry fp32 graphs,
# and a second, cast graph per network with its own fp32 pins would be a recipe never run on a
# GPU here, so 11 is refused with what to install instead.
SUPPORTED_TENSORRT = ((10, 1), (11, 0))
REQUIREMENT = "tensorrt>=10.1,<11"
TIMING_CACHE = "timing.cache"
# Layers whose fp16 error grows with the size of what they sum over: kept in fp32 under fp16.
FP32_LAYERS = ("NORMALIZATION", "REDUCE", "SOFTMAX")
# The sinusoidal time embedding: t (up to ~1000) times frequencies, then sin and cos. In fp16,
# t * f at t ~ 999 is off by up to 0.5 rad (and the frequencies by 5e-4 relative), so under fp16
# the layers from the input t through these kinds, up to and including the first of TIME_UNTIL,
# run in fp32, with the constants they read.
TIME_INPUT = "t"
TIME_THROUGH = ("CAST", "SHUFFLE", "SQUEEZE", "UNSQUEEZE", "SLICE", "PADDING", "ELEMENTWISE", "UNARY",
                "ACTIVATION", "CONCATENATION")
TIME_UNTIL = ("MATRIX_MULTIPLY", "FULLY_CONNECTED", "CONVOLUTION")
OPTIMIZATION_LEVEL = 3  # TensorRT's default, written down so that a change of default is a new recipe
# Bumped when the build changes in a way the recipe's fields do not show.
RECIPE_VERSION = 1


def import_tensorrt() -> ModuleType:
    """The `tensorrt` module, or an error that says what to install or use instead."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:  # OSError: the wheel is there but its libraries are not
        raise BackendError("backend 'tensorrt' needs the TensorRT Python package (pip install "
                           f"'{REQUIREMENT}') and an NVIDIA GPU; use backend='onnxruntime' or 'torch'") from e
    version = getattr(tensorrt, "__version__", "unknown")
    found = re.match(r"(\d+)\.(\d+)", version)
    low, high = SUPPORTED_TENSORRT
    if found is None or not low <= (int(found[1]), int(found[2])) < high:
        why = (" (strongly typed only: no fp16 builder flag or per-layer precisions)"
               if found is not None and int(found[1]) >= high[0] else "")
        raise BackendError(f"backend 'tensorrt' needs TensorRT 10.1 or a later 10.x; this is TensorRT {version}"
                           f"{why}: pip install '{REQUIREMENT}', or use backend='torch'")
    return tensorrt


def tensorrt_usable() -> bool:
    """Whether TensorRT really imports here and is a version this backend builds with."""
    try:
        import_tensorrt()
    except BackendError:
        return False
    return True


def build_recipe(precision: str) -> dict:
    """How an engine of this precision is built: every choice that changes the plan but is not
    in the graph, so that the cache key can tell a plan built another way."""
    fp16 = precision == "fp16"
    return {"version": RECIPE_VERSION, "precision": precision,
            "builder_flags": ["FP16", "OBEY_PRECISION_CONSTRAINTS"] if fp16 else [],
            "tf32": False,  # TensorRT's default is on: fp32 matmuls and convs with a 10-bit mantissa
            "fp32_layers": list(FP32_LAYERS) if fp16 else [],
            "fp32_time_path": {"input": TIME_INPUT, "through": list(TIME_THROUGH), "until": list(TIME_UNTIL)}
            if fp16 else None,
            "optimization_level": OPTIMIZATION_LEVEL}


def recipe_sha256(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Profile:
    """The batch sizes an engine accepts (min..max) and the one it is tuned for (opt)."""
    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise InvalidArgumentError(f"a batch profile needs 1 <= min <= opt <= max, got {self}")

    def contains(self, batch: int) -> bool:
        return self.min <= batch <= self.max

    def covers(self, other: Profile) -> bool:
        return self.min <= other.min and other.max <= self.max

    def widened(self, batch: int) -> Profile:
        """A profile that also takes `batch`; the max at least doubles, so a batch that keeps
        growing costs a few rebuilds, not one per size."""
        return Profile(min(self.min, batch), self.opt, max(batch, 2 * self.max))


def network_profiles(n: int, max_images: int, decode_batch: int | None = None) -> dict[str, Profile]:
    """Each network's profile for n samples per image and up to max_images images per call:
    the encoder sees the images, the denoiser n per image, the decoder what Segmenter gives it
    per call: one image's samples, decode_batch at a time (None: all n)."""
    for value, what in ((n, "n"), (max_images, "max_images"), (decode_batch or 1, "decode_batch")):
        if not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"{what} must be an integer >= 1, got {value!r}")
    decoded = min(decode_batch or n, n)
    return {"image_encoder": Profile(1, 1, max_images),
            "denoiser": Profile(1, n, n * max_images),
            "decoder": Profile(1, decoded, decoded)}


@dataclass(frozen=True)
class GpuIdentity:
    """What an engine is specific to on the hardware side."""
    name: str
    compute_capability: str  # "sm_89"

    @classmethod
    def of(cls, device: torch.device) -> GpuIdentity:
        props = torch.cuda.get_device_properties(device)
        return cls(props.name, f"sm_{props.major}{props.minor}")

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "gpu"


@dataclass(frozen=True)
class CachedPlan:
    plan: bytes
    profile: Profile  # the profile the plan was built with: at least the one asked for
    built: bool  # built by this call, not read from the cache


def stale_reason(stored: dict, expected: dict) -> str | None:
    """Why an engine built for the key `stored` cannot serve `expected`, or None when it can.
    Everything must match but the profile, which need only cover the expected one."""
    reasons = []
    target = ("gpu", "compute_capability", "tensorrt")
    if any(stored.get(k) != expected[k] for k in target):
        reasons.append(f"was built for GPU {stored.get('gpu')!r} ({stored.get('compute_capability')}) / "
                       f"TensorRT {stored.get('tensorrt')}, this is GPU {expected['gpu']!r} "
                       f"({expected['compute_capability']}) / TensorRT {expected['tensorrt']}")
    if stored.get("graph_sha256") != expected["graph_sha256"]:
        reasons.append(f"was built before its graph changed (sha256 {str(stored.get('graph_sha256'))[:12]}... "
                       f"-> {expected['graph_sha256'][:12]}...)")
    if stored.get("precision") != expected["precision"]:
        reasons.append(f"was built for {stored.get('precision')}, {expected['precision']} is wanted")
    elif stored.get("recipe_sha256") != expected["recipe_sha256"]:
        reasons.append(_recipe_reason(stored, expected))
    if stored.get("bundle_format_version") != expected["bundle_format_version"]:
        reasons.append(f"was built from a bundle of format version {stored.get('bundle_format_version')}, "
                       f"this one has {expected['bundle_format_version']}")
    reasons += _profile_reasons(stored.get("profile"), Profile(**expected["profile"]))
    checked = {*target, "graph_sha256", "precision", "recipe", "recipe_sha256", "bundle_format_version", "profile"}
    reasons += [f"has {k} {stored.get(k)!r}, {expected[k]!r} is wanted"
                for k in expected if k not in checked and stored.get(k) != expected[k]]
    return "; ".join(reasons) or None


def _recipe_reason(stored: dict, expected: dict) -> str:
    old, new = stored.get("recipe"), expected["recipe"]
    changed = sorted(k for k in new if old.get(k) != new[k]) if isinstance(old, dict) else []
    return (f"was built by another build recipe (sha256 {str(stored.get('recipe_sha256'))[:12]}... -> "
            f"{expected['recipe_sha256'][:12]}...{'; changed: ' + ', '.join(changed) if changed else ''})")


def _profile_reasons(stored, needed: Profile) -> list[str]:
    try:
        have = Profile(**stored)
    except (TypeError, InvalidArgumentError):
        return [f"has no valid batch profile ({stored!r})"]
    reasons = []
    if have.min > needed.min:
        reasons.append(f"has profile min batch {have.min} > {needed.min} needed")
    if have.max < needed.max:
        reasons.append(f"has profile max batch {have.max} < {needed.max} needed")
    return reasons


def build_plan(trt: ModuleType, onnx_bytes: bytes, network_entry: dict, profile: Profile, precision: str,
               timing_cache: bytes | None = None) -> tuple[bytes, bytes | None]:
    """Build a serialized engine for one graph with one batch profile. Returns the plan and the
    timing cache to keep for the next build (None where this TensorRT has none)."""
    logger = tensorrt_logger(trt)
    logger.errors.clear()
    parsed = parse_network(trt, onnx_bytes, network_entry)
    config = builder_config(trt, parsed, network_entry, profile, precision)
    cache = _timing_cache(config, timing_cache)
    plan = parsed.builder.build_serialized_network(parsed.network, config)
    if plan is None:
        raise BackendError("TensorRT could not build the engine: " + ("; ".join(logger.errors)
                                                                      or "it gave no reason"))
    return bytes(plan), None if cache is None else bytes(cache.serialize())


@dataclass
class Parsed:
    builder: object
    network: object
    parser: object  # owns the graph's weights: it must outlive the build


def parse_network(trt: ModuleType, onnx_bytes: bytes, network_entry: dict) -> Parsed:
    """The graph as a TensorRT network (weakly typed: an fp16 build picks layer precisions)."""
    logger = tensorrt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "\n  ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse the ONNX graph:\n  {errors}")
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    if names != set(network_entry["inputs"]):
        raise BackendError(f"the graph's inputs {sorted(names)} are not the manifest's "
                           f"{sorted(network_entry['inputs'])}: the bundle is inconsistent; export it again")
    return Parsed(builder, network, parser)


def builder_config(trt: ModuleType, parsed: Parsed, network_entry: dict, profile: Profile, precision: str):
    """The builder configuration of build_recipe(precision), with the batch profile; under fp16
    it also pins the fp32_layers of the network to fp32."""
    if precision not in ("fp16", "fp32"):
        raise BackendError(f"precision {precision!r} is not one TensorRT builds; use 'fp16' or 'fp32'")
    recipe = build_recipe(precision)
    missing = [f for f in recipe["builder_flags"] if not hasattr(trt.BuilderFlag, f)]
    if missing:
        raise BackendError(f"this TensorRT builder ({trt.__name__} {trt.__version__}) is strongly typed: it "
                           f"has no {' or '.join(missing)} flag and builds the graph in the fp32 it was "
                           "exported in; use precision='fp32'")
    config = parsed.builder.create_builder_config()
    optimization = parsed.builder.create_optimization_profile()
    for name, spec in network_entry["inputs"].items():
        rest = list(spec["shape"][1:])
        optimization.set_shape(name, [profile.min, *rest], [profile.opt, *rest], [profile.max, *rest])
    config.add_optimization_profile(optimization)
    config.builder_optimization_level = recipe["optimization_level"]
    (config.set_flag if recipe["tf32"] else config.clear_flag)(trt.BuilderFlag.TF32)
    for flag in recipe["builder_flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if recipe["fp32_layers"] or recipe["fp32_time_path"]:
        _keep_fp32(trt, parsed.network, fp32_layers(trt, parsed.network))
    return config


def fp32_layers(trt: ModuleType, network) -> set[str]:
    """The names of the layers an fp16 build keeps in fp32: the float layers of the FP32_LAYERS
    kinds (integer ones compute shapes), and the time embedding's path from the input t."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    kinds = _layer_types(trt, FP32_LAYERS)
    return {layer.name for layer in layers if layer.type in kinds and _float(trt, layer)} | \
        _time_path(trt, network, layers)


def _time_path(trt: ModuleType, network, layers: list) -> set[str]:
    """The layers from the input TIME_INPUT through TIME_THROUGH kinds up to and including the
    first TIME_UNTIL one on each path, and the float constants they read."""
    if TIME_INPUT not in {network.get_input(i).name for i in range(network.num_inputs)}:
        return set()
    through, until = _layer_types(trt, TIME_THROUGH), _layer_types(trt, TIME_UNTIL)
    consumers, producer = defaultdict(list), {}
    for layer in layers:
        for tensor in _inputs(layer):
            consumers[tensor.name].append(layer)
        for j in range(layer.num_outputs):
            producer[layer.get_output(j).name] = layer
    path, frontier = set(), [TIME_INPUT]
    while frontier:
        for layer in consumers[frontier.pop()]:
            if layer.name in path or layer.type not in through | until or not _float(trt, layer):
                continue
            path.add(layer.name)
            path.update(p.name for p in (producer.get(t.name) for t in _inputs(layer))
                        if p is not None and p.type == trt.LayerType.CONSTANT and _float(trt, p))
            if layer.type in through:
                frontier += [layer.get_output(j).name for j in range(layer.num_outputs)]
    return path


def _layer_types(trt: ModuleType, names: tuple[str, ...]) -> set:
    return {getattr(trt.LayerType, k) for k in names if hasattr(trt.LayerType, k)}


def _inputs(layer) -> list:
    return [t for t in (layer.get_input(j) for j in range(layer.num_inputs)) if t is not None]


def _float(trt: ModuleType, layer) -> bool:
    return all(layer.get_output(j).dtype == trt.float32 for j in range(layer.num_outputs))


class EngineCache:
    """The plans for one GPU, TensorRT version and precision, under the bundle's engines/."""

    def __init__(self, trt: ModuleType, bundle: Bundle, gpu: GpuIdentity, precision: str):
        self.trt = trt
        self.bundle = bundle
        self.gpu = gpu
        self.precision = precision
        self.version = trt.__version__
        self.recipe = build_recipe(precision)
        self.folder = bundle.engines_dir / f"{gpu.slug}-{gpu.compute_capability}-trt{self.version}-{precision}"

    def key(self, network: str, profile: Profile) -> dict:
        """What the engine for `network` must have been built for, to be reused."""
        return {"network": network,
                "graph_sha256": self.bundle.manifest["files"][self.bundle.network(network)["file"]],
                "profile": asdict(profile), "precision": self.precision, "recipe": self.recipe,
                "recipe_sha256": recipe_sha256(self.recipe), "tensorrt": self.version,
                "gpu": self.gpu.name, "compute_capability": self.gpu.compute_capability,
                "bundle_format_version": self.bundle.manifest["format_version"]}

    def plan(self, network: str, profile: Profile, rebuild: str | None = None) -> CachedPlan:
        """The engine for `network` taking at least `profile`'s batches: the cached one while
        its key holds, else a new build (announced with the reason) that replaces it.
        rebuild: a reason to build even so (the cached plan would not load)."""
        expected = self.key(network, profile)
        cached, reason = (None, rebuild) if rebuild else self._lookup(network, expected)
        if cached is not None:
            return cached
        return self._build(network, profile, expected, reason)

    def _lookup(self, network: str, expected: dict) -> tuple[CachedPlan | None, str]:
        key_file, plan_file = self.folder / f"{network}.json", self.folder / f"{network}.plan"
        if not (key_file.is_file() and plan_file.is_file()):
            return None, self._elsewhere(network, expected)
        stored = _read_key(key_file)
        if stored is None:
            return None, f"has an unreadable key file ({key_file.name})"
        reason = stale_reason(stored, expected)
        if reason:
            return None, reason
        plan = plan_file.read_bytes()
        if sha256(plan) != stored.get("plan_sha256"):
            return None, "does not match the sha256 its key records (damaged, or a write was interrupted)"
        return CachedPlan(plan, Profile(**stored["profile"]), built=False), ""

    def _elsewhere(self, network: str, expected: dict) -> str:
        """Why there is none here: the newest engine for this network in another folder says
        what changed (another GPU, TensorRT version or precision)."""
        others = [f for f in self.bundle.engines_dir.glob(f"*/{network}.json") if f.parent != self.folder]
        for file in sorted(others, key=lambda f: f.stat().st_mtime, reverse=True):
            stored = _read_key(file)
            reason = stale_reason(stored, expected) if stored is not None else None
            if reason:
                return reason
        return "has not been built yet"

    def _build(self, network: str, profile: Profile, expected: dict, reason: str) -> CachedPlan:
        log.warning("the TensorRT engine for %s %s: building it (%s, batch %d..%d, tuned for %d) for %s with "
                    "TensorRT %s; this can take minutes, once per GPU, TensorRT version and precision",
                    network, reason, self.precision, profile.min, profile.max, profile.opt, self.gpu.name, self.version)
        start = time.perf_counter()
        timing_file = self.folder / TIMING_CACHE
        timing = timing_file.read_bytes() if timing_file.is_file() else None
        plan, timing = build_plan(self.trt, self.bundle.onnx(network), self.bundle.network(network),
                                  profile, self.precision, timing)
        try:  # the plan first, then its key: a crash in between leaves a key whose plan_sha256 fails
            _write(self.folder / f"{network}.plan", plan)
            _write(self.folder / f"{network}.json",
                   (json.dumps({**expected, "plan_sha256": sha256(plan)}, indent=2) + "\n").encode())
            if timing:
                _write(timing_file, timing)
            kept = f"cached in {self.folder}"
        except OSError as e:  # a read-only bundle still runs, it just builds again next time
            kept = f"not cached ({e}): it will be built again next time"
        log.warning("built the %s engine in %.0f s; %s", network, time.perf_counter() - start, kept)
        return CachedPlan(plan, profile, built=True)


def _read_key(file: Path) -> dict | None:
    try:
        key = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return key if isinstance(key, dict) else None


def _write(path: Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def _keep_fp32(trt: ModuleType, network, names: set[str]) -> None:
    """Pin the named layers to fp32, computation and outputs (an fp16 build obeys it under
    OBEY_PRECISION_CONSTRAINTS)."""
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name in names:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)


def _timing_cache(config, data: bytes | None):
    """A timing cache for this build, seeded with `data` when it is valid for this GPU and
    TensorRT; None where the builder has none (TensorRT-RTX keeps the calls as no-ops that
    warn DeprecationWarning)."""
    if not hasattr(config, "create_timing_cache"):
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = config.create_timing_cache(data or b"")
        accepted = config.set_timing_cache(cache, ignore_mismatch=False)
    if any(issubclass(w.category, DeprecationWarning) for w in caught):
        return None
    if not accepted:  # from another GPU or TensorRT version: start afresh
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def tensorrt_logger(trt: ModuleType):
    """The logger for every builder and runtime of this TensorRT module, alive for the whole
    process: TensorRT keeps one global logger pointer, so a second logger, or a first one
    collected, would be a warning or a dangling pointer."""
    if trt.__name__ not in _LOGGERS:
        _LOGGERS[trt.__name__] = _make_logger(trt)
    return _LOGGERS[trt.__name__]


_LOGGERS: dict[str, object] = {}


def _make_logger(trt: ModuleType):
    shown = (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR, trt.ILogger.Severity.WARNING)

    class Logger(trt.ILogger):
        """Prints warnings and errors to stderr (a custom logger sees every severity, so it
        filters itself) and keeps the last errors, for the message of a failed build."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: deque[str] = deque(maxlen=20)

        def log(self, severity, msg):
            if severity in shown[:2]:
                self.errors.append(msg)
            if severity in shown:
                log.warning("TensorRT: %s", msg)

    return Logger()
