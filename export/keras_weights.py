"""The official LDSeg Keras weights (HDF5 files of Keras 2 `save_weights`) -> our PyTorch LDSeg, read
with h5py alone: no TensorFlow, no pickle. The same mechanism reads the 2-D networks (imageEncoder.hdf5,
...) and the 3-D ones (imageEncoder3D.hdf5, ...): the configuration says which files and which networks.

Mapping: the file's layers that hold weights, in the graph order its `layer_names` records, are
matched kind by kind (conv, transposed conv, dense, batch norm, group/layer norm, attention block)
with our modules in the order one forward pass calls them; the official graph and ours apply the
layers of each kind in the same order. Everything is checked: each layer's kind (from its Keras
name), its weight names, every shape, that no dataset is left unread and that every tensor of our
network received a value. Anything else is a ModelLoadError naming the file and the layer.
"""
from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from ..configs import get_config
from ..errors import ModelLoadError
from ..models import build_model
from ..models.layers import SelfAttention
from ..pipeline.preprocess import OFFICIAL

FILES = {"image_encoder": "imageEncoder.hdf5", "label_encoder": "labelEncoder.hdf5",
         "denoiser": "denoiser.hdf5", "decoder": "labelDecoder.hdf5"}  # the 2-D networks; see keras_files()
OPTIONAL = ("label_encoder",)  # training only: sampling never uses it
# Keras names a layer after its class, numbered from the second one of a class (conv2d, conv2d_1, ...).
KERAS_CLASSES = {"conv2d": "conv", "conv3d": "conv", "conv2d_transpose": "conv_transpose", "dense": "dense",
                 "batch_normalization": "batch_norm", "group_normalization": "norm", "layer_normalization": "norm",
                 "multi_head_attention_block": "attention", "attention_block": "attention"}
# The three layers the official code names itself.
NAMED_LAYERS = {"embedding_output": "batch_norm", "encoder_output": "norm", "denoiser_output": "conv"}
# Per kind: the Keras weights in their saved order, and the tensors of our module they become.
WEIGHTS = {
    "conv": (("kernel", "bias"), ("weight", "bias")),
    "conv_transpose": (("kernel", "bias"), ("weight", "bias")),
    "dense": (("kernel", "bias"), ("weight", "bias")),
    "batch_norm": (("gamma", "beta", "moving_mean", "moving_variance"),
                   ("weight", "bias", "running_mean", "running_var")),
    "norm": (("gamma", "beta"), ("weight", "bias")),
    # The official attention blocks create norm, query, key, value, proj in this order.
    "attention": (("gamma", "beta") + ("kernel", "bias") * 4,
                  ("norm.weight", "norm.bias", "query.weight", "query.bias", "key.weight", "key.bias",
                   "value.weight", "value.bias", "proj.weight", "proj.bias")),
}
_NUMBERED = re.compile(r"^(.*?)(?:_(\d+))?$")


def keras_files(cfg) -> dict[str, str]:
    """The official file of each network of `cfg`: imageEncoder.hdf5, ... for images, imageEncoder3D.hdf5, ...
    for volumes."""
    suffix = "3D" if cfg.spatial_dims == 3 else ""
    return {network: file.replace(".hdf5", f"{suffix}.hdf5") for network, file in FILES.items()}


def _module_kind(module: nn.Module) -> str | None:
    if isinstance(module, SelfAttention):
        return "attention"
    if isinstance(module, nn.ConvTranspose2d):
        return "conv_transpose"
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        return "conv"
    if isinstance(module, nn.Linear):
        return "dense"
    if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
        return "batch_norm"
    if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
        return "norm"
    return None


def _layer_kind(name: str) -> str | None:
    if name in NAMED_LAYERS:
        return NAMED_LAYERS[name]
    return KERAS_CLASSES.get(_NUMBERED.match(name).group(1))


def _to_torch(array: np.ndarray, kind: str) -> np.ndarray:
    """Keras layout -> ours, for a weight of a layer of `kind`. Dense (in, out) -> (out, in); LayerNorm's
    per-element (H, W, C) / (D, H, W, C) -> (C, H, W) / (C, D, H, W); conv kernels (*spatial, in, out) ->
    (out, in, *spatial): Conv2D HWIO -> OIHW, Conv3D DHWIO -> OIDHW (in/groups when grouped), and
    Conv2DTranspose (kh, kw, out, in) -> (in, out, kh, kw), the same permutation."""
    if array.ndim < 2:
        return array
    if array.ndim == 2:  # dense layers' and attention blocks' kernels
        return array.T
    if kind == "norm":
        return np.moveaxis(array, -1, 0)
    return array.transpose(array.ndim - 1, array.ndim - 2, *range(array.ndim - 2))


def _example_inputs(network: str, cfg) -> tuple:
    """One input of each network's shape, on the meta device: the walk needs the order of calls, not values."""
    def meta(*shape):
        return torch.empty(*shape, device="meta")
    latent = meta(1, *cfg.latent_shape)
    return {"image_encoder": (meta(1, cfg.in_channels, *cfg.image_shape),),
            "label_encoder": (meta(1, 1, *cfg.image_shape),),
            "decoder": (latent,),
            "denoiser": (latent, meta(1, *cfg.condition_shape), meta(1))}[network]


def _call_order(net: nn.Module, cfg, inputs: tuple) -> list[tuple[str, str]]:
    """(qualified name, kind) of the network's weighted modules in the order a forward pass calls them
    (an attention block counts as one: Keras saves its weights inside one layer). The pass runs on a
    weightless copy built from `cfg` on the meta device: it costs neither memory nor arithmetic."""
    with torch.device("meta"):
        probe = type(net)(cfg).eval()
    modules = dict(probe.named_modules())
    attention = [name for name, m in modules.items() if isinstance(m, SelfAttention)]
    order, handles = [], []
    for name, module in modules.items():
        kind = _module_kind(module)
        if kind is None or any(name.startswith(a + ".") for a in attention):
            continue
        handles.append(module.register_forward_pre_hook(
            lambda m, args, name=name, kind=kind: None if (name, kind) in order else order.append((name, kind))))
    try:
        with torch.no_grad():
            probe(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return order


def _read_layers(path: Path) -> list[tuple[str, str, list[tuple[str, np.ndarray]]]]:
    """(layer name, kind, [(weight name, array)]) of each layer with weights, in the file's graph order.
    Refuses layers of kinds no LDSeg network has, weights other than the kind's, and datasets no
    layer lists (they would be silently dropped)."""
    try:
        file = h5py.File(path, "r")
    except OSError as e:
        raise ModelLoadError(f"{path}: not a readable HDF5 file ({e})") from None
    with file:
        root = file["model_weights"] if "model_weights" in file else file  # model.save() nests the weights
        if "layer_names" not in root.attrs:
            raise ModelLoadError(f"{path}: not a Keras weights file (no 'layer_names' attribute)")
        names = [_text(n) for n in root.attrs["layer_names"]]
        # Keras 2.12 also writes an empty 'top_level_model_weights' group; only datasets count.
        unlisted = sorted(k for k in set(root.keys()) - set(names) if _datasets(root[k]))
        if unlisted:
            raise ModelLoadError(f"{path}: layer(s) {unlisted} hold weights but are not in the file's layer_names")
        layers = []
        for name in names:
            group = root[name]
            weight_names = [_text(w) for w in group.attrs.get("weight_names", [])]
            leftover = sorted(set(_datasets(group)) - set(weight_names))
            if leftover:
                raise ModelLoadError(f"{path}: layer {name!r} holds dataset(s) {leftover} that its weight_names "
                                     "do not list")
            if not weight_names:
                continue
            kind = _layer_kind(name)
            if kind is None:
                raise ModelLoadError(f"{path}: layer {name!r} (weights {weight_names}) is not a layer any LDSeg "
                                     "network has")
            bases = tuple(w.rsplit("/", 1)[-1].split(":")[0] for w in weight_names)
            if bases != WEIGHTS[kind][0]:
                raise ModelLoadError(f"{path}: layer {name!r} has weights {list(bases)}; a {kind} layer has "
                                     f"{list(WEIGHTS[kind][0])}")
            missing = [w for w in weight_names if w not in group]
            if missing:
                raise ModelLoadError(f"{path}: layer {name!r} lists weight(s) {missing} that the file lacks")
            layers.append((name, kind, [(w, np.asarray(group[w])) for w in weight_names]))
        return layers


def _datasets(node) -> list[str]:
    """Paths of the datasets under an HDF5 node (itself, if it is one)."""
    if isinstance(node, h5py.Dataset):
        return [node.name]
    found = []
    node.visititems(lambda key, obj: found.append(key) if isinstance(obj, h5py.Dataset) else None)
    return found


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _absent(names: list[str]) -> list[str]:
    """Auto-numbered names missing from a class's run (conv2d_16, conv2d_18 -> conv2d_17)."""
    if not names:
        return []
    stem = _NUMBERED.match(names[0]).group(1)
    present = {int(_NUMBERED.match(n).group(2) or 0) for n in names}
    return [f"{stem}_{k}" if k else stem for k in range(min(present), max(present)) if k not in present]


def load_network(net: nn.Module, path, network: str, cfg) -> None:
    """Copy the weights of one official Keras file into `net` (one of LDSeg's four networks), in place;
    the network is untouched unless every weight fits."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file (the official {network} weights)")
    layers = _read_layers(path)
    for layer, kind, weights in layers:  # a file of the other dimension would otherwise fail on counts first
        kernel = weights[0][1]
        if kind in ("conv", "conv_transpose") and kernel.ndim - 2 != cfg.spatial_dims:
            raise ModelLoadError(f"{path}: layer {layer!r} holds a {kernel.ndim - 2}-D kernel {kernel.shape}; the "
                                 f"{cfg.name} {network} is a {cfg.spatial_dims}-D network")
    modules = _call_order(net, cfg, _example_inputs(network, cfg))
    state, values = net.state_dict(), {}
    for kind in WEIGHTS:
        theirs = [layer for layer in layers if layer[1] == kind]
        ours = [name for name, k in modules if k == kind]
        if len(theirs) != len(ours):
            absent = _absent([n for n, _, _ in theirs if n not in NAMED_LAYERS])
            hint = f"; absent from the file's numbering: {absent}" if absent else ""
            if len(theirs) > len(ours):
                hint += f"; first left over: {theirs[len(ours)][0]!r}"
            elif not absent:  # the last of the kind is gone: name what it was for
                after = f"after {theirs[-1][0]!r}" if theirs else "at all"
                hint += f"; {network}.{ours[len(theirs)]} gets no layer: the file has none of this kind {after}"
            raise ModelLoadError(f"{path}: {len(theirs)} {kind} layer(s) where the {cfg.name} {network} has "
                                 f"{len(ours)}{hint}")
        for (layer, _, weights), module_name in zip(theirs, ours):
            for (weight_name, array), target_name in zip(weights, WEIGHTS[kind][1]):
                key, value = f"{module_name}.{target_name}", _to_torch(array, kind)
                if value.shape != tuple(state[key].shape):
                    raise ModelLoadError(f"{path}: layer {layer!r} weight {weight_name!r} of shape {array.shape} "
                                         f"does not fit {network}.{key} of shape {tuple(state[key].shape)}")
                values[key] = value
    unset = [k for k in state if k not in values and not k.endswith("num_batches_tracked")]
    if unset:
        raise ModelLoadError(f"{path}: no weights in the file for {network} tensor(s) {unset}")
    with torch.no_grad():
        for key, value in values.items():
            state[key].copy_(torch.from_numpy(np.ascontiguousarray(value)))


def load_keras_model(directory, config: str = "glas512", seed: int = 0, optional=OPTIONAL):
    """An LDSeg model of `config` with the official weights in `directory` (imageEncoder.hdf5,
    labelDecoder.hdf5, denoiser.hdf5, labelEncoder.hdf5); a network in `optional` whose file is
    absent keeps its random initialisation (by default the label encoder, which sampling never
    uses; to train a denoiser for the published networks, the denoiser). A 3-D configuration
    (knee3d) reads the 3-D files: imageEncoder3D.hdf5, labelDecoder3D.hdf5, denoiser3D.hdf5 and
    labelEncoder3D.hdf5."""
    cfg = get_config(config)
    if cfg.family != "ldseg":
        raise ModelLoadError(f"the official Keras weights are LDSeg networks; configuration {config!r} is "
                             f"of the {cfg.family} family")
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelLoadError(f"{directory}: no such folder of official Keras weights")
    model = build_model(cfg, seed)
    for network, file in keras_files(cfg).items():
        if network in optional and not (directory / file).exists():
            continue
        load_network(getattr(model, network), directory / file, network, cfg)
    model.preprocessing = OFFICIAL  # the exporter records it: sampling must prepare images as the official loader
    return model.eval()
