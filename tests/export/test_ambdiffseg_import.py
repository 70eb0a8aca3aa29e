"""Importing checkpoints of the original AmbDiffSeg code (JakobLC/AmbDiffSeg @ 1e93309, PyTorch).

The checkpoints here are written as the original's train.py writes them: torch.save of
{"step", "model": the U-Net's state dict, "seed", "optimizer", "log_loss_scale", "config": the
OmegaConf DictConfig, "metrics"}, the config pickled as OmegaConf pickles it (an inert stand-in
package named omegaconf, put in sys.modules only while saving) and numpy float64s where the
original has them. The U-Net is `OriginalUNet` below: a plain-torch restatement of the original's
models/unet.py UNetModel (and models/nn.py), module for module under the original's names and with
its forward, written without the importer's mapping. Its weights are seeded random numbers
everywhere (none zero), so a key paired with the wrong tensor changes the output.
"""
from __future__ import annotations

import json
import math
import pickle
import sys
import types
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from ldseg_rt import Segmenter
from ldseg_rt.bundle import load_bundle
from ldseg_rt.errors import ModelLoadError
from ldseg_rt.export.__main__ import main as export_main
from ldseg_rt.export.ambdiffseg_weights import load_ambdiffseg_model
from ldseg_rt.models import AmbiguousModel

# ----------------------------------------------------------------------------------------------
# The original U-Net, restated (models/unet.py, models/nn.py)
# ----------------------------------------------------------------------------------------------


def normalization(channels):
    return nn.GroupNorm(32 if channels % 32 == 0 else channels, channels)


def timestep_embedding(t, dim, max_period=10):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, channels, emb_channels, out_channels=None):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(normalization(out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    def __init__(self, channels, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        qkv = qkv.reshape(b * self.num_heads, -1, qkv.shape[2])  # QKVAttention (legacy layout)
        ch = qkv.shape[1] // 3
        q, k, v = torch.split(qkv, ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
        h = torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, qkv.shape[-1])
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class OriginalUNet(nn.Module):
    """UNetModel as create_unet_from_args builds it (old upsample method, no MLP attention)."""

    def __init__(self, model_channels=32, channel_mult=(1, 1, 2, 4), num_res_blocks=(1, 2, 3, 4),
                 num_middle_res_blocks=4, attention_resolutions=(-1,), num_heads=4, final_act="tanh"):
        super().__init__()
        self.model_channels = model_channels
        emb = model_channels * 4
        attention = [a + len(channel_mult) if a < 0 else a for a in attention_resolutions]
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(4, model_channels, 3, padding=1))])
        chans, ch, resolution = [model_channels], model_channels, 0
        for level, (mult, n) in enumerate(zip(channel_mult, num_res_blocks)):
            for _ in range(n):
                layers = [ResBlock(ch, emb, mult * model_channels)]
                ch = mult * model_channels
                if resolution in attention:
                    layers.append(AttentionBlock(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                resolution += 1
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                chans.append(ch)
        if resolution in attention:
            middle = sum([[ResBlock(ch, emb), AttentionBlock(ch, num_heads)] for _ in range(num_middle_res_blocks - 1)],
                         []) + [ResBlock(ch, emb)]
        else:
            middle = [ResBlock(ch, emb) for _ in range(num_middle_res_blocks)]
        self.middle_block = TimestepEmbedSequential(*middle)
        self.output_blocks = nn.ModuleList()
        for level, mult, n in zip(reversed(range(len(channel_mult))), channel_mult[::-1], num_res_blocks[::-1]):
            for i in range(n + 1):
                layers = [ResBlock(ch + chans.pop(), emb, model_channels * mult)]
                ch = model_channels * mult
                if resolution in attention:
                    layers.append(AttentionBlock(ch, num_heads))
                if level and i == n:
                    resolution -= 1
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(nn.Identity(), normalization(ch), nn.SiLU(), nn.Conv2d(ch, 1, 3, padding=1),
                                 nn.Tanh() if final_act == "tanh" else nn.Identity())

    def forward(self, image, sample, timesteps):
        h = torch.cat([sample, image], dim=1)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        hs = []
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def albumentations_normalize(pixels: torch.Tensor) -> torch.Tensor:
    """A.Normalize() on uint8 / 255 images: (img - mean * 255) / (std * 255), ImageNet mean and std."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    return (pixels * 255 - mean) / std


# ----------------------------------------------------------------------------------------------
# The original's checkpoint (train.py save_train_ckpt), its config as OmegaConf pickles it
# ----------------------------------------------------------------------------------------------

# A small run of the original's layout: 3 levels (widths 8, 16, 64: GroupNorm per channel, and 32
# groups of 2 at 64), res blocks 1, 2, 1, attention at the two lowest levels (decoder blocks with
# attention and an upsample), 3 middle blocks (R A R A R), 64x64 crops.
SMALL = {
    "training": {"seed": 0, "lr": 0.0001, "use_fp16": True, "loss_weights": "SNR_plus1", "betas": [0.9, 0.999],
                 "decouple_loss_weights": False, "save_path": "saves_training/small.pt"},
    "unet": {"random_crop64": True, "num_res_blocks": [1, 2, 1], "num_channels": 8, "num_middle_res_blocks": 3,
             "attention_resolutions": [-2, -1], "channel_mult": [1, 2, 8], "num_heads": 2, "num_heads_upsample": -1,
             "final_act": "tanh_if_x", "predict": "x", "use_gen_prob_unet": False, "dropout": 0.0,
             "one_skip_per_reso": False, "new_upsample_method": False, "mlp_attn": False, "identity_init": False},
    "diffusion": {"noise_schedule": "cosine", "input_scale": 0.1, "var_type": "large"},
    "sampling": {"seed": 0, "num_preds_per_sample": 4, "clip_denoised": True, "num_timesteps": 10,
                 "sampler_type": "ddpm"},
}


def original_unet(config: dict, seed: int = 0) -> OriginalUNet:
    """The original network of `config` (as create_unet_from_args reads it), every tensor a seeded random
    value: weights ~ N(0, 1 / fan_in), biases and norm shifts ~ N(0, 0.1^2), norm scales ~ 1 + N(0, 0.1^2)."""
    u = config["unet"]
    final_act = ("tanh" if u["predict"] == "x" else "none") if u["final_act"] == "tanh_if_x" else u["final_act"]
    net = OriginalUNet(u["num_channels"], tuple(u["channel_mult"]), tuple(u["num_res_blocks"]),
                       u["num_middle_res_blocks"], tuple(u["attention_resolutions"]), u["num_heads"], final_act)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim > 1:
                p.copy_(noise / math.sqrt(p[0].numel()))
            elif ".norm." in name or name.endswith(("in_layers.0.weight", "out_layers.0.weight", "out.1.weight")):
                p.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return net.eval()


def _stand_in_omegaconf() -> dict[str, types.ModuleType]:
    """Modules named as OmegaConf's, whose classes pickle as OmegaConf 2.x's do: NEWOBJ of the class,
    then BUILD with the instance dict (_metadata, _parent, _content / _val)."""
    modules = {name: types.ModuleType(name) for name in
               ("omegaconf", "omegaconf.dictconfig", "omegaconf.listconfig", "omegaconf.nodes", "omegaconf.base")}
    for module, cls in (("dictconfig", "DictConfig"), ("listconfig", "ListConfig"), ("nodes", "AnyNode"),
                        ("base", "ContainerMetadata"), ("base", "Metadata")):
        made = type(cls, (), {"__module__": f"omegaconf.{module}"})
        setattr(modules[f"omegaconf.{module}"], cls, made)
    return modules


def _omegaconf(value, modules, key=None, parent=None):
    """`value` (plain dicts, lists, scalars) as the OmegaConf objects OmegaConf.load would build."""
    base = modules["omegaconf.base"]

    def metadata(cls, object_type, element_type=Any):
        m = cls.__new__(cls)
        m.__dict__.update(ref_type=Any, object_type=object_type, optional=True, key=key, flags={}, flags_root=False,
                          resolver_cache=defaultdict(dict), key_type=Any, element_type=element_type)
        return m

    if isinstance(value, dict):
        node = modules["omegaconf.dictconfig"].DictConfig.__new__(modules["omegaconf.dictconfig"].DictConfig)
        node.__dict__.update(_metadata=metadata(base.ContainerMetadata, dict), _parent=parent)
        node._content = {k: _omegaconf(v, modules, k, node) for k, v in value.items()}
        if parent is None:
            node._metadata.flags = {"struct": True}  # load_config: OmegaConf.set_struct(cfg, True)
    elif isinstance(value, list):
        node = modules["omegaconf.listconfig"].ListConfig.__new__(modules["omegaconf.listconfig"].ListConfig)
        node.__dict__.update(_metadata=metadata(base.ContainerMetadata, list, int), _parent=parent)
        node._content = [_omegaconf(v, modules, i, node) for i, v in enumerate(value)]
    else:
        node = modules["omegaconf.nodes"].AnyNode.__new__(modules["omegaconf.nodes"].AnyNode)
        node.__dict__.update(_metadata=metadata(base.Metadata, None), _parent=parent, _val=value)
    return node


def save_original_checkpoint(path, state_dict: dict, config: dict | None, monkeypatch) -> None:
    """torch.save of what save_train_ckpt saves: the config an OmegaConf DictConfig, the optimizer's lr and
    the validation metrics numpy float64 (np.clip / np.mean results in the original)."""
    modules = _stand_in_omegaconf()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    if (config or {}).get("training", {}).get("use_fp16"):
        # _master_params_to_state_dict: the fp32 master weights, one flat tensor unflattened into views
        flat = torch._utils._flatten_dense_tensors([v.float() for v in state_dict.values()])
        state_dict = dict(zip(state_dict, torch._utils._unflatten_dense_tensors(flat, list(state_dict.values()))))
    params = [torch.zeros(1, requires_grad=True)]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01).state_dict()
    payload = {"step": 5000, "model": state_dict, "seed": 0, "optimizer": optimizer, "log_loss_scale": 19.87,
               "metrics": {"train": {1: {"iou": 0.5, "dice": 0.6, "mse": 0.3, "loss": 0.2}},
                           "vali": {1000: {"iou": np.float64(0.4), "dice": np.float64(0.5), "mse": np.float64(0.3)}}}}
    if config is not None:
        payload["config"] = _omegaconf(config, modules)
        if "training" in config:  # AdamW(betas=args.training.betas): a ListConfig in the param groups
            optimizer["param_groups"][0]["betas"] = payload["config"]._content["training"]._content["betas"]
    optimizer["param_groups"][0]["lr"] = np.float64(1e-4) * np.clip(5000 / 1000, 0.0, 1.0)
    torch.save(payload, path)
    for name in modules:
        monkeypatch.delitem(sys.modules, name)


@pytest.fixture(scope="module")
def reference() -> OriginalUNet:
    return original_unet(SMALL, seed=1)


@pytest.fixture
def checkpoint(tmp_path, reference, monkeypatch):
    path = tmp_path / "small.pt"
    save_original_checkpoint(path, reference.state_dict(), SMALL, monkeypatch)
    return path


@pytest.fixture(scope="module")
def module_checkpoint(tmp_path_factory, reference):
    path = tmp_path_factory.mktemp("ambdiffseg") / "small.pt"
    with pytest.MonkeyPatch.context() as mp:
        save_original_checkpoint(path, reference.state_dict(), SMALL, mp)
    return path


@pytest.fixture(scope="module")
def imported(module_checkpoint):
    return load_ambdiffseg_model(module_checkpoint)


def inputs(batch: int, size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(batch, 1, size, size, generator=g)
    image = torch.randn(batch, 3, size, size, generator=g)  # what the U-Net sees: normalised images
    return x_t, image, torch.rand(batch, generator=g)


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


# ----------------------------------------------------------------------------------------------
# The imported network computes what the original does
# ----------------------------------------------------------------------------------------------


def test_the_checkpoint_is_not_plain_weights(checkpoint):
    """The file really has what torch's weights-only unpickler refuses on its own (as the original's)."""
    found = set(torch.serialization.get_unsafe_globals_in_checkpoint(checkpoint))
    assert {"omegaconf.dictconfig.DictConfig", "omegaconf.nodes.AnyNode", "typing.Any",
            "collections.defaultdict"} <= found
    assert any(g.endswith("multiarray.scalar") for g in found)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(checkpoint, weights_only=True)


def test_imported_unet_computes_the_original(imported, reference):
    assert isinstance(imported, AmbiguousModel) and imported.config.image_size == 64
    for seed in (0, 1):  # fresh random inputs at the model's size
        x_t, image, t = inputs(3, 64, seed)
        with torch.no_grad():
            ours, theirs = imported.denoiser(x_t, image, t), reference(image, x_t, t)
        assert theirs.abs().max() > 0.1 and theirs.std() > 0.05  # not saturated or constant
        assert relative_error(ours, theirs) < 1e-5


def test_imported_model_normalises_images_as_the_original_loader(imported, reference):
    g = torch.Generator().manual_seed(2)
    pixels = torch.rand(2, 3, 64, 64, generator=g)  # prepared images in [0, 1]
    x_t, t = torch.randn(2, 1, 64, 64, generator=g), torch.rand(2, generator=g)
    with torch.no_grad():
        ours = imported.denoiser(x_t, imported.image_encoder(pixels), t)
        theirs = reference(albumentations_normalize(pixels), x_t, t)
    assert relative_error(ours, theirs) < 1e-5


@pytest.mark.parametrize("predict", ["v", "eps"])
def test_unsquashed_predictions_compute_the_original(tmp_path, monkeypatch, predict):
    config = {**SMALL, "unet": {**SMALL["unet"], "predict": predict}}
    reference = original_unet(config, seed=3)
    save_original_checkpoint(tmp_path / "c.pt", reference.state_dict(), config, monkeypatch)
    model = load_ambdiffseg_model(tmp_path / "c.pt")
    assert model.config.prediction == predict
    x_t, image, t = inputs(2, 64, 4)
    with torch.no_grad():
        ours, theirs = model.denoiser(x_t, image, t), reference(image, x_t, t)
    assert theirs.abs().max() > 1.5  # no tanh
    assert relative_error(ours, theirs) < 1e-5


def test_paper_configuration_imports_with_the_papers_parameter_count(tmp_path, monkeypatch):
    """configs/config_default.yaml's U-Net: 6,891,905 parameters as the original builds it (3 image channels)."""
    config = {**SMALL, "unet": {**SMALL["unet"], "random_crop64": False, "num_res_blocks": [1, 2, 3, 4],
                                "num_channels": 32, "num_middle_res_blocks": 4, "attention_resolutions": [-1],
                                "channel_mult": [1, 1, 2, 4], "num_heads": 4}}
    reference = original_unet(config, seed=5)
    assert sum(p.numel() for p in reference.parameters()) == 6_891_905
    save_original_checkpoint(tmp_path / "paper.pt", reference.state_dict(), config, monkeypatch)
    model = load_ambdiffseg_model(tmp_path / "paper.pt")
    cfg = model.config
    assert (cfg.image_size, cfg.base_channels, cfg.channel_mults, cfg.num_res_blocks, cfg.num_middle_blocks,
            cfg.attention_levels, cfg.heads, cfg.time_embed_dim, cfg.time_dim) == (
        128, 32, (1, 1, 2, 4), (1, 2, 3, 4), 4, (3,), 4, 32, 128)
    assert sum(p.numel() for p in model.parameters()) == 6_891_905
    x_t, image, t = inputs(1, 128, 6)
    with torch.no_grad():
        assert relative_error(model.denoiser(x_t, image, t), reference(image, x_t, t)) < 1e-5


# ----------------------------------------------------------------------------------------------
# The configuration: the checkpoint's own, the weights', the paper's
# ----------------------------------------------------------------------------------------------


def test_configuration_comes_from_the_checkpoint(tmp_path, monkeypatch, reference):
    config = {**SMALL, "diffusion": {"noise_schedule": "cosine", "input_scale": 0.25, "var_type": "small"},
              "sampling": {"clip_denoised": False, "num_timesteps": 4, "sampler_type": "ddim"},
              "training": {**SMALL["training"], "loss_weights": "SNR_trunc"}}
    save_original_checkpoint(tmp_path / "c.pt", reference.state_dict(), config, monkeypatch)
    model = load_ambdiffseg_model(tmp_path / "c.pt")
    cfg = model.config
    assert (cfg.in_channels, cfg.image_size, cfg.base_channels, cfg.channel_mults, cfg.num_res_blocks) == (
        3, 64, 8, (1, 2, 8), (1, 2, 1))
    assert (cfg.attention_levels, cfg.num_middle_blocks, cfg.heads, cfg.prediction) == ((1, 2), 3, 2, "x")
    assert (cfg.input_scale, cfg.variance, cfg.sampler, cfg.steps, cfg.clip, cfg.eta) == (
        0.25, "small", "ddim", 4, 0.0, 0.0)
    assert (cfg.loss_weighting, cfg.norm_groups, cfg.time_max_period, cfg.logsnr_clamp) == (
        "max_snr_1", 32, 10.0, 20.0)
    provenance = model.ambdiffseg_provenance
    assert provenance["steps"] == "checkpoint config sampling.num_timesteps"
    assert provenance["heads"] == "checkpoint config unet.num_heads"
    assert provenance["logsnr_clamp"].startswith("the original code")


def test_paper_settings_where_the_config_is_silent(tmp_path, monkeypatch, reference):
    config = {"unet": dict(SMALL["unet"])}  # no diffusion, sampling or training sections
    save_original_checkpoint(tmp_path / "c.pt", reference.state_dict(), config, monkeypatch)
    model = load_ambdiffseg_model(tmp_path / "c.pt")
    cfg = model.config
    assert (cfg.input_scale, cfg.variance, cfg.sampler, cfg.steps, cfg.clip) == (0.1, "large", "ddpm", 10, 1.0)
    assert model.ambdiffseg_provenance["input_scale"].startswith("the paper's setting")


def test_bare_state_dict_architecture_from_the_weights(tmp_path, reference):
    torch.save(reference.state_dict(), tmp_path / "bare.pt")
    model = load_ambdiffseg_model(tmp_path / "bare.pt")
    cfg = model.config
    assert (cfg.image_size, cfg.base_channels, cfg.channel_mults, cfg.num_res_blocks, cfg.num_middle_blocks,
            cfg.attention_levels) == (128, 8, (1, 2, 8), (1, 2, 1), 3, (1, 2))
    assert cfg.heads == 4 and model.ambdiffseg_provenance["heads"].startswith("the paper's setting")
    assert model.ambdiffseg_provenance["channel_mults"] == "the weights' keys and shapes"


def test_safetensors_round_trip(tmp_path, reference, imported):
    weights = {k: v.contiguous() for k, v in reference.state_dict().items()}
    safetensors.torch.save_file(weights, tmp_path / "small.safetensors", metadata={"config": json.dumps(SMALL)})
    model = load_ambdiffseg_model(tmp_path / "small.safetensors")
    assert model.config == imported.config
    ours, theirs = model.state_dict(), imported.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    safetensors.torch.save_file(weights, tmp_path / "bare.safetensors")  # no config: architecture from the weights
    bare = load_ambdiffseg_model(tmp_path / "bare.safetensors").config
    assert (bare.channel_mults, bare.num_res_blocks, bare.attention_levels) == ((1, 2, 8), (1, 2, 1), (1, 2))


# ----------------------------------------------------------------------------------------------
# Refusals: a ModelLoadError naming the file and the key
# ----------------------------------------------------------------------------------------------


def _refused(path, *needles):
    with pytest.raises(ModelLoadError) as e:
        load_ambdiffseg_model(path)
    message = str(e.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, message
    return message


def test_refuses_a_key_our_model_lacks(tmp_path, monkeypatch, reference):
    state = {**reference.state_dict(), "input_blocks.1.0.extra.weight": torch.zeros(3)}
    save_original_checkpoint(tmp_path / "c.pt", state, SMALL, monkeypatch)
    _refused(tmp_path / "c.pt", "input_blocks.1.0.extra.weight")


def test_refuses_a_missing_key(tmp_path, monkeypatch, reference):
    state = {k: v for k, v in reference.state_dict().items() if k != "output_blocks.2.1.proj_out.weight"}
    save_original_checkpoint(tmp_path / "c.pt", state, SMALL, monkeypatch)
    _refused(tmp_path / "c.pt", "missing", "output_blocks.2.1.proj_out.weight")


def test_refuses_a_wrong_shape(tmp_path, monkeypatch, reference):
    state = dict(reference.state_dict())
    state["middle_block.1.qkv.weight"] = torch.zeros(192, 64, 3)
    save_original_checkpoint(tmp_path / "c.pt", state, SMALL, monkeypatch)
    _refused(tmp_path / "c.pt", "middle_block.1.qkv.weight", "[192, 64, 3]", "[192, 64, 1]")


def test_refuses_weights_unlike_the_config(tmp_path, monkeypatch, reference):
    config = {**SMALL, "unet": {**SMALL["unet"], "channel_mult": [1, 2, 4]}}  # the weights' lowest level is 64 wide
    save_original_checkpoint(tmp_path / "c.pt", reference.state_dict(), config, monkeypatch)
    _refused(tmp_path / "c.pt", "input_blocks.")


@pytest.mark.parametrize("key, value", [("mlp_attn", True), ("predict", "both"), ("final_act", "softmax"),
                                        ("num_heads_upsample", 1)])
def test_refuses_settings_it_cannot_honour(tmp_path, monkeypatch, reference, key, value):
    config = {**SMALL, "unet": {**SMALL["unet"], key: value}}
    save_original_checkpoint(tmp_path / "c.pt", reference.state_dict(), config, monkeypatch)
    _refused(tmp_path / "c.pt", f"unet.{key}")


class Arbitrary:
    def __reduce__(self):
        return (print, ("unpickled",))


def test_refuses_a_pickle_with_an_arbitrary_object(tmp_path, reference, capsys):
    torch.save({"model": reference.state_dict(), "config": Arbitrary()}, tmp_path / "evil.pt")
    _refused(tmp_path / "evil.pt", "refused", "print")
    assert "unpickled" not in capsys.readouterr().out


def test_refuses_a_missing_file(tmp_path):
    _refused(tmp_path / "nowhere.pt", "does not exist")


def test_refuses_a_damaged_file(tmp_path, checkpoint):
    (tmp_path / "cut.pt").write_bytes(checkpoint.read_bytes()[:5000])
    _refused(tmp_path / "cut.pt")


# ----------------------------------------------------------------------------------------------
# Export: the bundle samples what the imported model samples
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(module_checkpoint, tmp_path_factory):
    """Exported as a user does: python -m ldseg_rt.export --from-ambdiffseg CKPT."""
    out = tmp_path_factory.mktemp("bundle") / "small.ldseg"
    export_main(["--from-ambdiffseg", str(module_checkpoint), "--out", str(out), "--check-batches", "1,3",
                 "--bf16-agreement", "0"])
    return load_bundle(out)


def _image(seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    field = np.cumsum(np.cumsum(g.standard_normal((80, 80)), 0), 1)  # smooth: structure, not noise
    return np.repeat(field[:, :, None], 3, axis=2).astype(np.float32)  # grayscale repeated, as LIDC


def test_bundle_samples_as_the_imported_model(bundle, imported):
    assert bundle.manifest["family"] == "ambiguous" and bundle.manifest["config"]["in_channels"] == 3
    img = _image()
    from_bundle = Segmenter(bundle.path).sample(img, n=2, seed=0)
    from_model = Segmenter(imported).sample(img, n=2, seed=0)
    assert from_bundle.samples.shape == from_model.samples.shape == (2, 80, 80)
    assert np.mean(from_bundle.samples == from_model.samples) > 0.999
    assert np.abs(from_bundle.probs - from_model.probs).max() < 0.01


def test_bundle_on_the_torch_backend_samples_as_the_imported_model(bundle, imported):
    img = _image(1)
    from_bundle = Segmenter(bundle.path, backend="torch").sample(img, n=2, seed=0)
    from_model = Segmenter(imported).sample(img, n=2, seed=0)
    assert np.mean(from_bundle.samples == from_model.samples) > 0.999
