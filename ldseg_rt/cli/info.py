"""`python -m ldseg_rt info NAME.ldseg`: a bundle's manifest in human terms, after verifying it."""
from __future__ import annotations


def _shapes(tensors: dict) -> str:
    return ", ".join(f"{name} {list(t['shape'])}" for name, t in tensors.items())


def _sampling(diffusion: dict) -> str:
    if "input_scale" in diffusion:  # the pixel-space family
        return (f"{diffusion['steps']} {diffusion['sampler'].upper()} steps ({diffusion['variance']} variance), "
                f"{diffusion['schedule']} schedule with input scale {diffusion['input_scale']}, "
                f"x clipped to +-{diffusion['clip']}")
    return (f"{diffusion['steps']} DDIM steps, eta {diffusion['eta']}, {diffusion['schedule']} schedule over "
            f"{diffusion['timesteps']} timesteps")


def _bf16(record: dict | None, needed: float) -> str:
    if record is None:
        return "bf16: agreement with fp32 not measured at export, so precision='auto' keeps fp32"
    verdict = "enough" if record["agreement"] >= needed else "not enough"
    return (f"bf16: consensus agrees with fp32 on {record['agreement']:.4%} of pixels (worst image "
            f"{record['worst_image']:.4%}; {record['random_images']} random and {record['example_images']} example "
            f"image(s), n={record['n']}; {record['method']}): {verdict} for precision='auto' to use bf16 "
            f"(needs {needed:.1%} and a CPU with AVX-512 bf16 or AMX)")


def describe_bundle(bundle) -> str:
    """The manifest in human terms, and what backend="auto" would run it with here."""
    from ..backends import BF16_MIN_AGREEMENT, choose_backend, choose_precision, resolve_device

    m, cfg = bundle.manifest, bundle.manifest["config"]
    diffusion, size = m["diffusion"], "x".join(map(str, m["preprocessing"]["size"]))
    device = resolve_device("auto")
    backend = choose_backend(bundle, device)
    lines = [f"bundle {bundle.path} (format {m['format_version']}, family {m['family']}), "
             f"exported {m.get('created', '?')} from {m.get('source') or '?'}",
             f"model: {cfg['name']} configuration, {size} input with {cfg['in_channels']} channel(s), "
             f"{len(m['classes'])} classes: {', '.join(m['classes'])}",
             f"sampling: {_sampling(diffusion)}, {diffusion['prediction']} prediction, state "
             f"{'x'.join(str(d) for d in m['networks']['denoiser']['inputs']['z_t']['shape'][1:])}",
             f"preprocessing: {m['preprocessing']['intensity']}; {m['preprocessing']['resize']}",
             "networks (ONNX, dynamic batch):"]
    for name, net in m["networks"].items():
        worst = max(net["max_relative_error"].values(), default=float("nan"))
        lines.append(f"  {name:<14}{len(bundle.read(net['file'])) / 1e6:6.2f} MB  {_shapes(net['inputs'])} -> "
                     f"{_shapes(net['outputs'])}  (vs torch at export: {worst:.1e} relative)")
    engines = sorted(p.name for p in bundle.engines_dir.iterdir()) if bundle.engines_dir.is_dir() else []
    lines += [f"files: {len(m['files'])}, sha256 verified",
              "made with: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
              f"TensorRT engines cached: {', '.join(engines) or 'none'}",
              _bf16(m.get("precision", {}).get("bf16"), BF16_MIN_AGREEMENT),
              f"here, backend='auto' runs it with {backend} ({choose_precision(backend, bundle, device)}) on {device}"]
    return "\n".join(lines)


def run_info(args) -> None:
    from ..bundle import load_bundle

    print(describe_bundle(load_bundle(args.bundle)))


def add_parser(sub) -> None:
    info = sub.add_parser("info", help="describe an exported bundle (NAME.ldseg) after verifying it")
    info.add_argument("bundle")
    info.set_defaults(run=run_info)
