"""The bundle: the versioned artifact `python -m ldseg_rt.export` writes and every backend
runs (SPEC section 4). A folder NAME.ldseg/:

    manifest.json          what the model is, how to feed it, and the sha256 of every file
    weights.safetensors    the inference networks' weights (the torch backend)
    onnx/<network>.onnx    one graph per network, dynamic batch (onnxruntime, tensorrt)
    engines/...            TensorRT engines, a cache built on first use (not hashed)

Loading verifies the format version and every hash before anything is used, and the
verified bytes are what the backends get, so a file changed afterwards cannot slip in.
This module knows the format only, not the runtime that reads it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .atomic import replacing
from .errors import BundleError

FORMAT = "ldseg_rt.bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUFFIX = ".ldseg"
ENGINES = "engines"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    with replacing(path) as tmp:
        for name, data in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return Bundle(path, manifest, dict(files))


def load_bundle(path) -> Bundle:
    """Open a bundle, checking its format version and the hash of every file it lists."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle {str(path)!r} does not exist (an exported bundle is a folder)")
    manifest = _read_manifest(path)
    files = {}
    for name, expected in manifest["files"].items():
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"bundle {str(path)!r}: {MANIFEST} names a file outside the bundle: {name!r}")
        file = path / name
        if not file.is_file():
            raise BundleError(f"bundle {str(path)!r} is incomplete: {name} is missing")
        data = file.read_bytes()
        if sha256(data) != expected:
            raise BundleError(f"bundle {str(path)!r} is corrupt: {name} does not match its sha256 "
                              "in manifest.json (changed or damaged after export); export it again")
        files[name] = data
    return Bundle(path, manifest, files)


def _read_manifest(path: Path) -> dict:
    file = path / MANIFEST
    if not file.is_file():
        raise BundleError(f"{str(path)!r} is not a bundle: it has no {MANIFEST}")
    try:
        manifest = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"bundle {str(path)!r}: {MANIFEST} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{str(path)!r} is not an ldseg_rt bundle ({MANIFEST} names another format)")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"bundle {str(path)!r}: format_version {version!r} is not a version number")
    if version > FORMAT_VERSION:
        raise BundleError(f"bundle {str(path)!r} has format version {version}, newer than this "
                          f"ldseg_rt reads ({FORMAT_VERSION}): upgrade ldseg_rt or export with this one")
    for key in ("family", "config", "networks", "files"):
        if key not in manifest:
            raise BundleError(f"bundle {str(path)!r}: {MANIFEST} lacks {key!r}")
    return manifest
