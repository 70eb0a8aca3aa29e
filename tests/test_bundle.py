"""The bundle format on its own: hashes, versions, atomic writes (ldseg_rt.bundle)."""
import json
from pathlib import Path

import pytest

from ldseg_rt.bundle import FORMAT_VERSION, MANIFEST, is_bundle, load_bundle, sha256, write_bundle
from ldseg_rt.errors import BundleError, ModelLoadError

MANIFEST_FIELDS = {"family": "ldseg", "config": {}, "networks": {}}


def _files(rng) -> dict[str, bytes]:
    return {"weights.safetensors": rng.bytes(int(rng.integers(1, 5000))),
            "onnx/a.onnx": rng.bytes(int(rng.integers(0, 3000))), "onnx/b.onnx": rng.bytes(7)}


def test_round_trip_records_and_checks_every_hash(tmp_path, rng):
    files = _files(rng)
    write_bundle(tmp_path / "m.ldseg", MANIFEST_FIELDS, files)
    bundle = load_bundle(tmp_path / "m.ldseg")
    assert bundle.manifest["format_version"] == FORMAT_VERSION
    for name, data in files.items():
        assert bundle.read(name) == data
        assert bundle.manifest["files"][name] == sha256(data)
    with pytest.raises(BundleError, match="no file 'nope'"):
        bundle.read("nope")
    assert is_bundle(tmp_path / "m.ldseg") and is_bundle(str(tmp_path / "other.ldseg"))
    assert not is_bundle(tmp_path / "m.pt") and not is_bundle("builtin:phantom") and not is_bundle(3)


def test_bundle_error_is_a_model_load_error():
    assert issubclass(BundleError, ModelLoadError) and issubclass(BundleError, ValueError)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.joinpath("onnx/a.onnx").write_bytes(p.joinpath("onnx/a.onnx").read_bytes() + b"x"), "corrupt: onnx/a.onnx"),
    (lambda p: p.joinpath("weights.safetensors").unlink(), "incomplete: weights.safetensors is missing"),
    (lambda p: p.joinpath(MANIFEST).write_text("{not json"), "not valid JSON"),
    (lambda p: p.joinpath(MANIFEST).unlink(), "has no manifest.json"),
])
def test_damaged_bundles_are_refused(tmp_path, rng, damage, message):
    write_bundle(tmp_path / "m.ldseg", MANIFEST_FIELDS, _files(rng))
    damage(tmp_path / "m.ldseg")
    with pytest.raises(BundleError, match=message):
        load_bundle(tmp_path / "m.ldseg")


def _edit_manifest(path, **changes):
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(changes)
    (path / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("changes, message", [
    ({"format_version": FORMAT_VERSION + 1}, f"format version {FORMAT_VERSION + 1}, newer than this ldseg_rt reads"),
    ({"format_version": "1"}, "is not a version number"),
    ({"format": "something.else"}, "is not an ldseg_rt bundle"),
    ({"files": {"../escape": sha256(b"")}}, "outside the bundle"),
])
def test_foreign_and_future_manifests_are_refused(tmp_path, rng, changes, message):
    write_bundle(tmp_path / "m.ldseg", MANIFEST_FIELDS, _files(rng))
    _edit_manifest(tmp_path / "m.ldseg", **changes)
    with pytest.raises(BundleError, match=message):
        load_bundle(tmp_path / "m.ldseg")


def test_missing_manifest_key_is_named(tmp_path, rng):
    write_bundle(tmp_path / "m.ldseg", MANIFEST_FIELDS, _files(rng))
    manifest = json.loads((tmp_path / "m.ldseg" / MANIFEST).read_text())
    del manifest["networks"]
    (tmp_path / "m.ldseg" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="lacks 'networks'"):
        load_bundle(tmp_path / "m.ldseg")


def test_existing_bundle_is_kept_unless_overwritten(tmp_path, rng):
    first, second = _files(rng), _files(rng)
    write_bundle(tmp_path / "m.ldseg", MANIFEST_FIELDS, first)
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(tmp_path / "m.ldseg", MANIFEST_FIELDS, second)
    assert load_bundle(tmp_path / "m.ldseg").read("onnx/b.onnx") == first["onnx/b.onnx"]
    write_bundle(tmp_path / "m.ldseg", MANIFEST_FIELDS, second, overwrite=True)
    assert load_bundle(tmp_path / "m.ldseg").read("weights.safetensors") == second["weights.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ldseg"]


def test_failed_write_leaves_the_old_bundle_and_no_debris(tmp_path, rng, monkeypatch):
    old = _files(rng)
    write_bundle(tmp_path / "m.ldseg", MANIFEST_FIELDS, old)

    real_write = Path.write_bytes

    def fails_on_the_last_file(self, data):
        real_write(self, data[: len(data) // 2])
        if self.name == "z.onnx":
            raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", fails_on_the_last_file)
    with pytest.raises(OSError, match="disk full"):
        write_bundle(tmp_path / "m.ldseg", MANIFEST_FIELDS, {**_files(rng), "onnx/z.onnx": b"abc"}, overwrite=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ldseg"]
    assert load_bundle(tmp_path / "m.ldseg").read("weights.safetensors") == old["weights.safetensors"]
