"""The bundle format (ldseg_rt.bundle): hashes, the manifest's digest and fields, versions,
atomic writes, and the checks of an exported bundle's configuration against its graphs."""
import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from ldseg_rt.backends.onnxruntime_backend import OnnxRuntimeBackend
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


def _sealed(manifest: dict) -> dict:
    """The manifest with its digest recomputed, as an exporter would write it: the sha256 of
    its canonical JSON (sorted keys, no spaces), the digest field left out."""
    content = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    return {**content, "manifest_sha256": hashlib.sha256(canonical).hexdigest()}


def _edit_manifest(path, reseal=True, **changes):
    """Change top-level fields of a bundle's manifest, recomputing its digest unless told not to."""
    manifest = {**json.loads((path / MANIFEST).read_text()), **changes}
    (path / MANIFEST).write_text(json.dumps(_sealed(manifest) if reseal else manifest))


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
    (tmp_path / "m.ldseg" / MANIFEST).write_text(json.dumps(_sealed(manifest)))
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


# The manifest's own content is covered by its digest.

def test_manifest_records_the_digest_of_its_content(tmp_path, rng):
    bundle = write_bundle(tmp_path / "m.ldseg", MANIFEST_FIELDS, _files(rng))
    written = json.loads((bundle.path / MANIFEST).read_text())
    assert written["format_version"] == FORMAT_VERSION == 2
    assert written == _sealed(written) == bundle.manifest


@pytest.mark.parametrize("changes", [{"config": {"steps": 1}}, {"family": "ambiguous"}, {"extra": 0}])
def test_a_changed_manifest_is_refused(tmp_path, rng, changes):
    write_bundle(tmp_path / "m.ldseg", {**MANIFEST_FIELDS, "config": {"steps": 10}}, _files(rng))
    _edit_manifest(tmp_path / "m.ldseg", reseal=False, **changes)
    with pytest.raises(BundleError, match="manifest.json was changed after export.*export it again"):
        load_bundle(tmp_path / "m.ldseg")


def test_a_version_1_bundle_loads_with_a_warning(tmp_path, rng, caplog):
    files = _files(rng)
    write_bundle(tmp_path / "m.ldseg", MANIFEST_FIELDS, files)
    manifest = json.loads((tmp_path / "m.ldseg" / MANIFEST).read_text())
    del manifest["manifest_sha256"]
    (tmp_path / "m.ldseg" / MANIFEST).write_text(json.dumps({**manifest, "format_version": 1}))
    with caplog.at_level(logging.WARNING, logger="ldseg_rt.bundle"):
        bundle = load_bundle(tmp_path / "m.ldseg")
    assert bundle.read("onnx/b.onnx") == files["onnx/b.onnx"]
    assert "format version 1" in caplog.text and "not covered" in caplog.text
    (tmp_path / "m.ldseg" / MANIFEST).write_text(json.dumps({**manifest, "format_version": 2}))
    with pytest.raises(BundleError, match="lacks 'manifest_sha256'"):
        load_bundle(tmp_path / "m.ldseg")


# Manifests of the wrong shape are refused with a message, whatever the JSON holds.

@pytest.mark.parametrize("changes, message", [
    ({"networks": []}, "'networks' must be an object, not list"),
    ({"networks": {"decoder": []}}, "network 'decoder' must be an object with a 'file'"),
    ({"networks": {"decoder": {"file": 3}}}, "network 'decoder' must be an object with a 'file'"),
    ({"networks": {"decoder": {"file": "onnx/absent.onnx"}}}, "names 'onnx/absent.onnx', which is not in 'files'"),
    ({"files": "x"}, "'files' must be an object of name: sha256, not str"),
    ({"files": {"onnx/b.onnx": 5}}, "the sha256 of 'onnx/b.onnx' is 5, not 64 hex digits"),
    ({"files": {"onnx/b.onnx": "abc"}}, "the sha256 of 'onnx/b.onnx' is 'abc', not 64 hex digits"),
    ({"config": 5}, "'config' must be an object, not int"),
    ({"family": "other"}, "family 'other' is not one of"),
    ({"family": ["ldseg"]}, "family \\['ldseg'\\] is not one of"),
    ({"format_version": True}, "is not a version number"),
    ({"format_version": None}, "is not a version number"),
])
def test_manifest_fields_of_the_wrong_type_are_refused(tmp_path, rng, changes, message):
    write_bundle(tmp_path / "m.ldseg", MANIFEST_FIELDS, _files(rng))
    _edit_manifest(tmp_path / "m.ldseg", **changes)
    with pytest.raises(BundleError, match=message):
        load_bundle(tmp_path / "m.ldseg")


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' * 100_000, "[]", "null", "\udcff"])
def test_deeply_nested_or_foreign_json_is_refused(tmp_path, rng, text):
    write_bundle(tmp_path / "m.ldseg", MANIFEST_FIELDS, _files(rng))
    (tmp_path / "m.ldseg" / MANIFEST).write_text(text, errors="surrogateescape")
    with pytest.raises(BundleError, match="not valid JSON|not an ldseg_rt bundle"):
        load_bundle(tmp_path / "m.ldseg")


# A bundle's files are plain files inside its folder.

def test_a_file_linked_to_outside_the_bundle_is_refused(tmp_path, rng):
    files = _files(rng)
    write_bundle(tmp_path / "m.ldseg", MANIFEST_FIELDS, files)
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(files["onnx/a.onnx"])  # the same bytes: the hash alone would pass
    (tmp_path / "m.ldseg" / "onnx" / "a.onnx").unlink()
    (tmp_path / "m.ldseg" / "onnx" / "a.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="onnx/a.onnx is a link or leads outside the bundle"):
        load_bundle(tmp_path / "m.ldseg")


def test_a_folder_linked_to_outside_the_bundle_is_refused(tmp_path, rng):
    write_bundle(tmp_path / "m.ldseg", MANIFEST_FIELDS, _files(rng))
    shutil.move(tmp_path / "m.ldseg" / "onnx", tmp_path / "elsewhere")
    (tmp_path / "m.ldseg" / "onnx").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(BundleError, match="leads outside the bundle"):
        load_bundle(tmp_path / "m.ldseg")


def test_a_linked_bundle_folder_still_loads(tmp_path, rng):
    files = _files(rng)
    write_bundle(tmp_path / "m.ldseg", MANIFEST_FIELDS, files)
    (tmp_path / "link.ldseg").symlink_to(tmp_path / "m.ldseg", target_is_directory=True)
    assert load_bundle(tmp_path / "link.ldseg").read("onnx/a.onnx") == files["onnx/a.onnx"]


# An exported bundle: its configuration must describe its graphs, and its graphs must load.

def _copy(builtin_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(builtin_bundle.path, tmp_path / "copy.ldseg"))


def _edit_config(path, **changes):
    manifest = json.loads((path / MANIFEST).read_text())
    _edit_manifest(path, config={**manifest["config"], **changes})


def _replace_file(path, name, data):
    """Put other bytes in one of the bundle's files, recording their hash (and the digest)."""
    (path / name).write_bytes(data)
    manifest = json.loads((path / MANIFEST).read_text())
    _edit_manifest(path, files={**manifest["files"], name: sha256(data)})


def test_an_edited_exported_manifest_is_refused(builtin_bundle, tmp_path):
    copy = _copy(builtin_bundle, tmp_path)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["config"]["steps"] = 1
    (copy / MANIFEST).write_text(json.dumps(manifest, indent=2))
    with pytest.raises(BundleError, match="was changed after export"):
        load_bundle(copy)


@pytest.mark.parametrize("changes, message", [
    ({"image_size": 64}, r"config image_size is 64 but the image_encoder graph onnx/image_encoder.onnx has "
                         r"input image of shape \['batch', 1, 128, 128\]"),
    ({"in_channels": 3}, r"config in_channels is 3 but the image_encoder graph .* \['batch', 1, 128, 128\]"),
    ({"latent_channels": 4}, r"config latent_shape is \(4, 16, 16\) but the denoiser graph onnx/denoiser.onnx "
                             r"has input z_t of shape \['batch', 1, 16, 16\]"),
    ({"image_size": 100}, "its config is not a valid configuration: .*not divisible"),
    ({"colour": "red"}, "its config is not a valid configuration: unknown configuration fields"),
])
def test_a_config_that_does_not_describe_the_graphs_is_refused(builtin_bundle, tmp_path, changes, message):
    copy = _copy(builtin_bundle, tmp_path)
    _edit_config(copy, **changes)
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


def test_an_unreadable_graph_is_refused_when_loading(builtin_bundle, tmp_path):
    copy = _copy(builtin_bundle, tmp_path)
    _replace_file(copy, "onnx/image_encoder.onnx", b"not a graph \x00\xff" * 10)
    with pytest.raises(BundleError, match="the image_encoder graph onnx/image_encoder.onnx is not a readable ONNX"):
        load_bundle(copy)


def test_an_unreadable_graph_is_a_bundle_error_in_onnxruntime(builtin_bundle, tmp_path):
    copy = _copy(builtin_bundle, tmp_path)
    _replace_file(copy, "onnx/decoder.onnx", b"not a graph \x00\xff" * 10)
    bundle = load_bundle(copy)  # the decoder's shape is not checked, so this is onnxruntime's to find
    with pytest.raises(BundleError, match="onnxruntime cannot load the decoder graph onnx/decoder.onnx"):
        OnnxRuntimeBackend(bundle, torch.device("cpu"))
