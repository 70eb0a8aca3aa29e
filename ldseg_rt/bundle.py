"""The bundle: the versioned artifact `python -m ldseg_rt.export` writes and every backend
runs. A folder NAME.ldseg/:

    manifest.json          what the model is, how to feed it, the sha256 of every file,
                           and the sha256 of the manifest itself (manifest_sha256)
    weights.safetensors    the inference networks' weights (the torch backend)
    onnx/<network>.onnx    one graph per network, dynamic batch (onnxruntime, tensorrt)
    engines/...            TensorRT engines, a cache built on first use (not hashed)

Loading verifies the format version, the manifest's fields and every hash before anything
is used, and checks the configuration against the graphs' input shapes; the verified bytes
are what the backends get, so a file changed afterwards cannot slip in. This module knows
the format only, not the runtime that reads it.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import platform
import re
from pathlib import Path

from .configs import FAMILIES, config_from_dict
from .errors import BundleError
from .io.atomic import replacing

log = logging.getLogger(__name__)

FORMAT = "ldseg_rt.bundle"
FORMAT_VERSION = 2  # 2: the manifest carries the sha256 of its own content
MANIFEST = "manifest.json"
DIGEST = "manifest_sha256"
SUFFIX = ".ldseg"
ENGINES = "engines"


_HEX64 = re.compile(r"[0-9a-f]{64}")


def package_versions() -> dict:
    """The versions that produced an artifact (a bundle, a result): ours and those of the
    packages that compute, the optional ones where installed."""
    from . import __version__
    versions = {"ldseg_rt": __version__, "python": platform.python_version()}
    for package in ("numpy", "torch", "onnx", "onnxruntime"):
        try:
            versions[package] = importlib.import_module(package).__version__
        except ImportError:
            pass
    return versions


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_digest(manifest: dict) -> str:
    """The sha256 of the manifest's canonical JSON (sorted keys, no spaces), leaving out
    the digest field itself."""
    content = {key: value for key, value in manifest.items() if key != DIGEST}
    return sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode())


class Bundle:
    """A loaded bundle whose files matched their hashes when it was opened."""

    def __init__(self, path: Path, manifest: dict, files: dict[str, bytes]):
        self.path = path
        self.manifest = manifest
        self._files = files

    def read(self, name: str) -> bytes:
        """The verified contents of one of the bundle's files."""
        if name not in self._files:
            raise BundleError(f"bundle {str(self.path)!r} has no file {name!r}")
        return self._files[name]

    def network(self, name: str) -> dict:
        """The manifest's entry for a network: its ONNX file and input/output names and shapes."""
        networks = self.manifest["networks"]
        if name not in networks:
            raise BundleError(f"bundle {str(self.path)!r} has no network {name!r}; it has {sorted(networks)}")
        return networks[name]

    def onnx(self, name: str) -> bytes:
        return self.read(self.network(name)["file"])

    @property
    def engines_dir(self) -> Path:
        return self.path / ENGINES


def is_bundle(engine) -> bool:
    """Whether `engine` names a bundle folder (or means to: a path ending in .ldseg)."""
    if not isinstance(engine, (str, Path)) or str(engine).startswith("builtin:"):
        return False
    path = Path(engine)
    return path.suffix == SUFFIX or (path / MANIFEST).is_file()


def write_bundle(path, manifest: dict, files: dict[str, bytes], overwrite: bool = False) -> Bundle:
    """Write the files and the manifest (with their hashes added) as one folder, atomically:
    a failure leaves whatever was at `path` before, untouched."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise BundleError(f"{str(path)!r} already exists; choose another name or overwrite it")
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest,
                "files": {name: sha256(data) for name, data in sorted(files.items())}}
    manifest[DIGEST] = manifest_digest(manifest)
    with replacing(path) as tmp:
        for name, data in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Bundle(path, manifest, dict(files))


def load_bundle(path) -> Bundle:
    """Open a bundle, checking its format version, its manifest's digest and fields, the
    hash of every file it lists, and the configuration against the graphs' input shapes."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle {str(path)!r} does not exist (an exported bundle is a folder)")
    manifest = _read_manifest(path)
    root = path.resolve()
    files = {}
    for name, expected in manifest["files"].items():
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"bundle {str(path)!r}: {MANIFEST} names a file outside the bundle: {name!r}")
        file = path / name
        if file.is_symlink() or not file.resolve().is_relative_to(root):
            raise BundleError(f"bundle {str(path)!r}: {name} is a link or leads outside the bundle; "
                              "a bundle's files must be plain files inside its folder")
        if not file.is_file():
            raise BundleError(f"bundle {str(path)!r} is incomplete: {name} is missing")
        data = file.read_bytes()
        if sha256(data) != expected:
            raise BundleError(f"bundle {str(path)!r} is corrupt: {name} does not match its sha256 "
                              "in manifest.json (changed or damaged after export); export it again")
        files[name] = data
    _check_shapes(path, manifest, files)
    return Bundle(path, manifest, files)


def _read_manifest(path: Path) -> dict:
    file = path / MANIFEST
    if not file.is_file():
        raise BundleError(f"{str(path)!r} is not a bundle: it has no {MANIFEST}")
    try:
        manifest = json.loads(file.read_text())
    except (ValueError, RecursionError) as e:  # ValueError covers bad UTF-8 and bad JSON
        raise BundleError(f"bundle {str(path)!r}: {MANIFEST} is not valid JSON "
                          f"(or is nested too deeply): {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{str(path)!r} is not an ldseg_rt bundle ({MANIFEST} names another format)")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"bundle {str(path)!r}: format_version {version!r} is not a version number")
    if version > FORMAT_VERSION:
        raise BundleError(f"bundle {str(path)!r} has format version {version}, newer than this "
                          f"ldseg_rt reads ({FORMAT_VERSION}): upgrade ldseg_rt or export with this one")
    _check_digest(path, manifest, version)
    for key in ("family", "config", "networks", "files"):
        if key not in manifest:
            raise BundleError(f"bundle {str(path)!r}: {MANIFEST} lacks {key!r}")
    _check_types(path, manifest)
    return manifest


def _check_digest(path: Path, manifest: dict, version: int) -> None:
    """The manifest's content must be what the exporter wrote; a version-1 bundle has no
    digest, so it loads with a warning."""
    if DIGEST not in manifest:
        if version >= 2:
            raise BundleError(f"bundle {str(path)!r}: {MANIFEST} lacks {DIGEST!r}, so its content cannot "
                              "be verified; export it again")
        log.warning("bundle %r has format version %d: its %s is not covered by a digest, so changes to it "
                    "cannot be detected; export it again to get one", str(path), version, MANIFEST)
        return
    try:
        actual = manifest_digest(manifest)
    except RecursionError as e:
        raise BundleError(f"bundle {str(path)!r}: {MANIFEST} is nested too deeply") from e
    if manifest[DIGEST] != actual:
        raise BundleError(f"bundle {str(path)!r}: {MANIFEST} was changed after export (its content does "
                          f"not match its {DIGEST}); export it again")


def _check_types(path: Path, manifest: dict) -> None:
    """Each field the runtime reads has the type it expects."""
    where = f"bundle {str(path)!r}: {MANIFEST}"
    if not isinstance(manifest["family"], str) or manifest["family"] not in FAMILIES:
        raise BundleError(f"{where}: family {manifest['family']!r} is not one of {sorted(FAMILIES)}")
    if not isinstance(manifest["config"], dict):
        raise BundleError(f"{where}: 'config' must be an object, not {type(manifest['config']).__name__}")
    files = manifest["files"]
    if not isinstance(files, dict):
        raise BundleError(f"{where}: 'files' must be an object of name: sha256, not {type(files).__name__}")
    for name, digest in files.items():
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise BundleError(f"{where}: the sha256 of {name!r} is {digest!r}, not 64 hex digits")
    networks = manifest["networks"]
    if not isinstance(networks, dict):
        raise BundleError(f"{where}: 'networks' must be an object, not {type(networks).__name__}")
    for name, network in networks.items():
        if not isinstance(network, dict) or not isinstance(network.get("file"), str):
            raise BundleError(f"{where}: network {name!r} must be an object with a 'file'")
        if network["file"] not in files:
            raise BundleError(f"{where}: network {name!r} names {network['file']!r}, which is not in 'files'")


def _check_shapes(path: Path, manifest: dict, files: dict[str, bytes]) -> None:
    """The configuration must describe the graphs: the image encoder's input is
    (in_channels, *image_shape) and the denoiser's z_t the latent shape."""
    import onnx

    networks = [name for name in ("image_encoder", "denoiser") if name in manifest["networks"]]
    if not networks:
        return
    try:
        cfg = config_from_dict(manifest["config"], manifest["family"])
    except Exception as e:  # ConfigError from its own checks, TypeError for fields of the wrong kind
        raise BundleError(f"bundle {str(path)!r}: its config is not a valid configuration: {e}") from e
    # Per network: the input checked, and per config field the part of its shape that field fixes.
    checks = {"image_encoder": ("image", [("in_channels", [cfg.in_channels], slice(1, 2)),
                                          ("image_size", list(cfg.image_shape), slice(2, None))]),
              "denoiser": ("z_t", [("latent_shape", list(cfg.latent_shape), slice(1, None))])}
    for name in networks:
        file = manifest["networks"][name]["file"]
        try:
            graph = onnx.load_from_string(files[file]).graph
        except Exception as e:  # protobuf's DecodeError, or whatever else a damaged graph raises
            raise BundleError(f"bundle {str(path)!r}: the {name} graph {file} is not a readable "
                              f"ONNX model: {e}") from e
        input_name, fields = checks[name]
        inputs = {i.name: i for i in graph.input}
        if input_name not in inputs:
            raise BundleError(f"bundle {str(path)!r}: the {name} graph {file} has no input {input_name!r}; "
                              f"it has {sorted(inputs)}")
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
                for d in inputs[input_name].type.tensor_type.shape.dim]
        for field, expected, part in fields:
            if dims[part] != expected:
                raise BundleError(f"bundle {str(path)!r}: config {field} is {getattr(cfg, field)} but the {name} "
                                  f"graph {file} has input {input_name} of shape {dims}; export it again")
