"""Checkpoints of the original AmbDiffSeg code (Christensen et al., SCIA 2025; github.com/JakobLC/AmbDiffSeg,
PyTorch, read at commit 1e93309) -> our AmbiguousModel, without running any code from the file.

What the original saves (src/amb_diff_seg/train.py, `save_train_ckpt`): `torch.save` of a dict

    {"step": int, "model": the U-Net's state dict (fp32 master weights, also when trained in fp16),
     "seed": int, "optimizer": AdamW state dict, "log_loss_scale": float,
     "config": the OmegaConf DictConfig the run was started with (configs/*.yaml + command line),
     "metrics": {"train": {step: {...}}, "vali": {step: {...}}}}

Its own evaluate.py reads it with `weights_only=False`: the OmegaConf objects, and the numpy float64s
(the learning rate in the optimizer's param groups, the validation metrics), are beyond what
torch's weights-only unpickler takes. We still read it with `torch.load(weights_only=True)`, with
only those globals allowlisted, each mapped to an inert stand-in defined here (`_STAND_INS`): a
stand-in keeps the pickled state as data and runs nothing, so a file naming any other global (an
arbitrary object) is refused as before. A `.safetensors` file is read with safetensors alone; it holds
the state dict in the original key layout, and optionally the original config as JSON in its metadata
under "config".

The U-Net (src/amb_diff_seg/models/unet.py `UNetModel`, models/nn.py), its state dict keys:

    time_embed.{0,2}                       Linear(C, 4C), Linear(4C, 4C)
    input_blocks.0.0                       Conv2d(1 + 3, C, 3): the stem on [x_t, image]
    input_blocks.i.0.in_layers.{0,2}       ResBlock: GroupNorm, conv3 (1: SiLU)
    input_blocks.i.0.emb_layers.1          ResBlock: Linear(4C, width) (0: SiLU)
    input_blocks.i.0.out_layers.{0,3}      ResBlock: GroupNorm, conv3 (1: SiLU, 2: Dropout)
    input_blocks.i.0.skip_connection       ResBlock: 1x1 conv where the widths differ
    input_blocks.i.1.{norm,qkv,proj_out}   AttentionBlock: GroupNorm, Conv1d(w, 3w, 1), Conv1d(w, w, 1)
    input_blocks.i.0.op                    Downsample: conv3 stride 2
    middle_block.j                         ResBlock, AttentionBlock, ResBlock, ... (flat)
    output_blocks.k.0 / .1                 ResBlock / AttentionBlock, as in input_blocks
    output_blocks.k.{1|2}.conv             Upsample (nearest x2) conv3, after the attention if any
    out.{1,3}                              GroupNorm, conv3 to 1 channel (0: Identity, 2: SiLU, 4: final act)

input_blocks.i (i >= 1) is our encoder[i - 1] (res blocks then a downsample per level, in the same
order), output_blocks.k our decoder[k], middle_block our middle with its attention blocks
interleaved; the attention's 1-D 1x1 convs become our 2-D ones (a trailing axis of 1). Every key is
paired explicitly (`key_pairs`) and checked: a key our model lacks, one it needs that the file lacks,
a shape or dtype that differs, or a config value we cannot honour is a ModelLoadError naming the
file and the key, raised before any weight is copied.

The configuration comes from the checkpoint's own config where it says (`unet.*`, `diffusion.*`,
`sampling.*`, `training.loss_weights`), the architecture otherwise from the weights' keys and shapes;
what neither says takes the original code's fixed values or the paper's settings (`FALLBACKS`).
`model.ambdiffseg_provenance` records which field came from where.

The original feeds its U-Net LIDC crops as uint8 grayscale repeated to 3 channels, normalised by
albumentations' `A.Normalize()` defaults: (p - mean) / std per channel with ImageNet's mean and std,
p = uint8 / 255 (data.py). The imported model's image encoder (the identity for our own models)
applies that normalisation to our prepared images in [0, 1]: the configuration records it
(image_mean, image_std), so a bundle's ONNX graphs and its rebuilt torch model both apply it.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..configs import ROBUST, AmbiguousConfig
from ..errors import ConfigError, ModelLoadError
from ..models import AmbiguousModel
from ..models.ambiguous import AmbiguousUNet, Downsample, MultiHeadAttention

IMAGE_CHANNELS = 3  # the original's forward asserts image.shape[1] == 3 (LIDC grayscale repeated)
IMAGE_MEAN = (0.485, 0.456, 0.406)  # albumentations A.Normalize() defaults (max_pixel_value 255)
IMAGE_STD = (0.229, 0.224, 0.225)
# Values the original's code fixes (not in its config), and the paper's settings where a config is silent.
FALLBACKS = {
    "norm_groups": 32,  # models/nn.py normalization(): 32 groups, or one per channel
    "time_max_period": 10.0,  # models/nn.py timestep_embedding(max_period=10)
    "logsnr_clamp": 20.0,  # diffusion.py get_named_gamma_schedule(logsnr_min=-20, logsnr_max=20)
    "eta": 0.0,  # the original's DDIM is deterministic
    # The paper's settings (its configs/config_default.yaml), where the checkpoint's config says nothing:
    "image_size": 128, "heads": 4, "dropout": 0.0, "prediction": "x", "input_scale": 0.1,
    "variance": "large", "sampler": "ddpm", "steps": 10, "clip": 1.0, "loss_weighting": "snr_plus1",
}
FIXED = ("norm_groups", "time_max_period", "logsnr_clamp", "eta")
STEM = "input_blocks.0.0.weight"
# training.loss_weights -> our loss_weighting (training only; sampling does not use it).
LOSS_WEIGHTS = {"SNR": "snr", "SNR_plus1": "snr_plus1", "SNR_trunc": "max_snr_1", "uniform": "uniform",
                "sigmoid": "sigmoid"}
# unet.* options that build a different network than the one ldseg_rt ports: (key, the value we take).
UNSUPPORTED = (("use_gen_prob_unet", False), ("new_upsample_method", False), ("mlp_attn", False),
               ("one_skip_per_reso", False))


# ----------------------------------------------------------------------------------------------
# Reading the file
# ----------------------------------------------------------------------------------------------

class _Node:
    """An inert stand-in for an OmegaConf container or node: the pickled state, kept as data."""

    def __setstate__(self, state):
        self.state = state


class _DictConfig(_Node):
    pass


class _ListConfig(_Node):
    pass


class _ValueNode(_Node):
    pass


class _Opaque(_Node):
    """A value the import never reads (OmegaConf metadata, numpy scalars and dtypes)."""


class _TypeTag:
    """A type named in OmegaConf metadata (ref_type, key_type, ...): only its name."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<type {self.name}>"


def _defaultdict(*_factory) -> dict:  # collections.defaultdict(dict): OmegaConf's resolver cache
    return {}


def _numpy_dtype(*_args) -> _Opaque:
    return _Opaque()


def _numpy_scalar(*_args) -> _Opaque:  # np.float64 values: the optimizer's lr, validation metrics
    return _Opaque()


_STAND_INS = [
    (_DictConfig, "omegaconf.dictconfig.DictConfig"), (_ListConfig, "omegaconf.listconfig.ListConfig"),
    *((_ValueNode, f"omegaconf.nodes.{name}") for name in (
        "AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "EnumNode", "PathNode", "BytesNode",
        "InterpolationResultNode")),
    (_Opaque, "omegaconf.base.ContainerMetadata"), (_Opaque, "omegaconf.base.Metadata"),
    *((_TypeTag(name), name) for name in ("typing.Any", "builtins.dict", "builtins.list", "builtins.tuple",
                                         "builtins.int", "builtins.float", "builtins.str", "builtins.bool",
                                         "builtins.bytes", "builtins.object")),
    (_defaultdict, "collections.defaultdict"),
    (_numpy_dtype, "numpy.dtype"),
    (_numpy_scalar, "numpy.core.multiarray.scalar"), (_numpy_scalar, "numpy._core.multiarray.scalar"),
]


def _plain(value):
    """Stand-ins -> plain Python: DictConfig -> dict, ListConfig -> list, a node -> its value."""
    if isinstance(value, _Node):
        state = getattr(value, "state", None) or {}
        if isinstance(value, _ValueNode):
            return _plain(state.get("_val"))
        if isinstance(value, (_DictConfig, _ListConfig)):
            return _plain(state.get("_content"))
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _refused(path: Path, error: Exception) -> ModelLoadError:
    """torch's weights-only unpickler refused the file. Its message advises allowlisting the global or
    weights_only=False, either of which could run code from the file: only its reason is passed on."""
    lines = [line.strip() for line in str(error.__context__ or error).splitlines() if line.strip()]
    reason = next((line for line in lines if line.startswith(("Unsupported global", "Trying to", "Can only"))),
                  "unpickling failed")
    reason = reason.split(". Please use")[0]
    return ModelLoadError(f"{str(path)!r}: refused: it holds Python objects beyond tensors and the original "
                          f"AmbDiffSeg checkpoint's config, which ldseg_rt does not unpickle because unpickling "
                          f"them could run code ({reason})")


def read_ambdiffseg_checkpoint(path) -> tuple[dict, dict | None]:
    """(state dict in the original key layout, the original config as plain dicts or None)."""
    path = Path(path)
    if path.is_dir():
        raise ModelLoadError(f"{str(path)!r} is a folder, not an AmbDiffSeg checkpoint file")
    if not path.is_file():
        raise ModelLoadError(f"AmbDiffSeg checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        with torch.serialization.safe_globals(_STAND_INS):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refused(path, e) from None
    except Exception as e:  # a damaged zip, a truncated file, not a torch file at all
        raise ModelLoadError(f"{str(path)!r} is not a readable torch checkpoint (damaged, truncated or not written by "
                             f"torch.save): {type(e).__name__}: {e}") from None
    if isinstance(payload, dict) and "model" in payload:
        state_dict, config = payload["model"], _plain(payload.get("config"))
    elif isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        state_dict, config = payload, None  # a bare state dict
    else:
        raise ModelLoadError(f"{str(path)!r} is not an AmbDiffSeg checkpoint: expected the dict train.py saves "
                             f"(with the U-Net's state dict under 'model') or a bare state dict")
    if not isinstance(state_dict, dict):
        raise ModelLoadError(f"{str(path)!r}: 'model' is a {type(state_dict).__name__}, not a state dict")
    if config is not None and not isinstance(config, dict):
        raise ModelLoadError(f"{str(path)!r}: 'config' is not a mapping of the original's settings")
    return dict(state_dict), config


def _read_safetensors(path: Path) -> tuple[dict, dict | None]:
    try:
        state_dict = safetensors.torch.load_file(path)
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(f"{str(path)!r} is not a readable safetensors file: {e}") from None
    if "config" not in metadata:
        return state_dict, None
    try:
        config = json.loads(metadata["config"])
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{str(path)!r}: metadata 'config' is not JSON: {e}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{str(path)!r}: metadata 'config' is not a mapping of the original's settings")
    return state_dict, config


# ----------------------------------------------------------------------------------------------
# The configuration
# ----------------------------------------------------------------------------------------------

@dataclass
class _Architecture:
    """The U-Net's shape as the weights show it."""
    base_channels: int
    channel_mults: tuple[int, ...]
    num_res_blocks: tuple[int, ...]
    attention_levels: tuple[int, ...]
    num_middle_blocks: int


def _shape(state_dict: dict, key: str, where: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ModelLoadError(f"{where}: missing key {key!r}")
    value = state_dict[key]
    if not isinstance(value, torch.Tensor):
        raise ModelLoadError(f"{where}: key {key!r} is a {type(value).__name__}, not a tensor")
    return tuple(value.shape)


def _stem(state_dict: dict, where: str) -> tuple[int, int]:
    """(base channels, image channels) from the stem conv input_blocks.0.0 on [x_t, image]."""
    shape = _shape(state_dict, STEM, where)
    if len(shape) != 4 or shape[1] != 1 + IMAGE_CHANNELS:
        raise ModelLoadError(f"{where}: key {STEM!r} has shape {list(shape)}; the original U-Net's stem is a "
                             f"conv3 on x_t and {IMAGE_CHANNELS} image channels: [C, {1 + IMAGE_CHANNELS}, 3, 3]")
    return shape[0], shape[1] - 1


def infer_architecture(state_dict: dict, where: str) -> _Architecture:
    """The levels, widths, res blocks and attention of the U-Net whose weights these are."""
    base, _ = _stem(state_dict, where)
    levels: list[list[tuple[int, int, bool]]] = [[]]  # per level: (index, width, attention) of each res block
    i = 1
    while any(k.startswith(f"input_blocks.{i}.") for k in state_dict):
        prefix = f"input_blocks.{i}."
        if f"{prefix}0.op.weight" in state_dict:
            if not levels[-1]:
                raise ModelLoadError(f"{where}: key {prefix + '0.op.weight'!r}: a downsample with no res block "
                                     "before it")
            levels.append([])
        else:
            width = _shape(state_dict, f"{prefix}0.in_layers.2.weight", where)[0]
            levels[-1].append((i, width, f"{prefix}1.qkv.weight" in state_dict))
        i += 1
    if not levels[-1]:
        raise ModelLoadError(f"{where}: no res block after the last downsample (input_blocks.{i - 1})")
    mults, attention = [], []
    for level, blocks in enumerate(levels):
        _, width, attends = blocks[0]
        for index, other_width, other_attends in blocks:
            if other_width != width or other_width % base or other_attends != attends:
                raise ModelLoadError(
                    f"{where}: key 'input_blocks.{index}.0.in_layers.2.weight' (width {other_width}, attention "
                    f"{other_attends}) does not fit level {level} of a U-Net with stem width {base}: the original's "
                    f"res blocks of a level share one width, a multiple of the stem's, and attention or not")
        mults.append(width // base)
        if attends:
            attention.append(level)
    middle, j = 0, 0
    while any(k.startswith(f"middle_block.{j}.") for k in state_dict):
        middle += f"middle_block.{j}.in_layers.2.weight" in state_dict
        j += 1
    return _Architecture(base, tuple(mults), tuple(len(b) for b in levels), tuple(attention), middle)


class _Settings:
    """The original's config (plain dicts) read key by key, with where each field came from."""

    def __init__(self, config: dict | None, where: str):
        self.config, self.where = config or {}, where
        self.provenance: dict[str, str] = {}

    def get(self, section: str, key: str, kinds: tuple, field: str | None = None):
        """config[section][key] (checked to be of `kinds`), or None where the config does not say."""
        part = self.config.get(section)
        if part is None:
            return None
        if not isinstance(part, dict):
            raise ModelLoadError(f"{self.where}: config key {section!r} is not a mapping")
        if part.get(key) is None:
            return None
        value = part[key]
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise ModelLoadError(f"{self.where}: config key '{section}.{key}' is {value!r}, expected "
                                 f"{' or '.join(k.__name__ for k in kinds)}")
        if field:
            self.provenance[field] = f"checkpoint config {section}.{key}"
        return value

    def fallback(self, field: str, fields: dict, note: str = "") -> None:
        fields[field] = FALLBACKS[field]
        self.provenance[field] = (f"the original code's fixed value{note}" if field in FIXED else
                                  f"the paper's setting, the config being silent{note}")


def _int_tuple(value, key: str, where: str) -> tuple[int, ...]:
    if isinstance(value, str):  # the form of the original's default argument, "-2,-1"
        value = [v for v in value.split(",") if v.strip()]
    values = value if isinstance(value, list) else [value]
    try:
        if any(isinstance(v, (bool, float)) for v in values):
            raise ValueError
        return tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ModelLoadError(f"{where}: config key {key!r} is {value!r}, expected integers") from None


ARCHITECTURE = {"base_channels": "num_channels", "channel_mults": "channel_mult", "num_res_blocks": "num_res_blocks",
                "attention_levels": "attention_resolutions", "num_middle_blocks": "num_middle_res_blocks"}


def _architecture(s: _Settings, state_dict: dict, fields: dict) -> None:
    """The U-Net's shape: from the config where it says (the weights must then agree: checked key by key
    later), else from the weights."""
    _stem(state_dict, s.where)
    unet = s.config.get("unet") if isinstance(s.config.get("unet"), dict) else {}
    arch = (None if all(unet.get(k) is not None for k in ARCHITECTURE.values()) else
            infer_architecture(state_dict, s.where))
    base = s.get("unet", "num_channels", (int,), "base_channels")
    fields["base_channels"] = base if base is not None else arch.base_channels
    mults = s.get("unet", "channel_mult", (list, int), "channel_mults")
    fields["channel_mults"] = (_int_tuple(mults, "unet.channel_mult", s.where) if mults is not None else
                               arch.channel_mults)
    levels = len(fields["channel_mults"])
    blocks = s.get("unet", "num_res_blocks", (list, int), "num_res_blocks")
    if blocks is not None:  # an int means that many at every level (unet.py)
        blocks = _int_tuple(blocks, "unet.num_res_blocks", s.where)
        fields["num_res_blocks"] = blocks * levels if isinstance(s.config["unet"]["num_res_blocks"], int) else blocks
    else:
        fields["num_res_blocks"] = arch.num_res_blocks
    attention = s.get("unet", "attention_resolutions", (list, int, str), "attention_levels")
    if attention is not None:  # the original counts a level below zero from the end, ignores one past the last
        attention = _int_tuple(attention, "unet.attention_resolutions", s.where)
        fields["attention_levels"] = tuple(sorted({a % levels for a in attention if -levels <= a < levels}))
    else:
        fields["attention_levels"] = arch.attention_levels
    middle = s.get("unet", "num_middle_res_blocks", (int,), "num_middle_blocks")
    if middle is not None:  # with attention the original builds [R, A] * (n - 1) + [R]: one block at least
        fields["num_middle_blocks"] = max(middle, 1 if levels - 1 in fields["attention_levels"] else 0)
    else:
        fields["num_middle_blocks"] = arch.num_middle_blocks
    for field in ARCHITECTURE:
        s.provenance.setdefault(field, "the weights' keys and shapes")
    fields["in_channels"] = IMAGE_CHANNELS
    s.provenance["in_channels"] = "the original code (its forward asserts 3 image channels) and the stem's shape"
    fields["time_embed_dim"] = fields["base_channels"]  # unet.py: timestep_embedding(t, model_channels)
    fields["time_dim"] = 4 * fields["base_channels"]  # unet.py: time_embed_dim = model_channels * 4
    s.provenance["time_embed_dim"] = s.provenance["time_dim"] = "the original code, from the base width"


def ambdiffseg_config(config: dict | None, state_dict: dict, where: str, name: str | None = None
                      ) -> tuple[AmbiguousConfig, dict[str, str]]:
    """Our AmbiguousConfig for an original checkpoint, and where each field came from."""
    s, fields = _Settings(config, where), {}
    for key, supported in UNSUPPORTED:
        value = s.get("unet", key, (bool,))
        if value is not None and value != supported:
            raise ModelLoadError(f"{where}: config key 'unet.{key}' is {value}: that builds a network other than "
                                 f"the U-Net ldseg_rt ports (which has unet.{key}={supported})")
    _architecture(s, state_dict, fields)

    heads = s.get("unet", "num_heads", (int,), "heads")
    upsample_heads = s.get("unet", "num_heads_upsample", (int,))
    if upsample_heads not in (None, -1) and upsample_heads != (heads or FALLBACKS["heads"]):
        raise ModelLoadError(f"{where}: config key 'unet.num_heads_upsample' is {upsample_heads}, unlike "
                             f"unet.num_heads: ldseg_rt's U-Net has one head count throughout")
    crop64 = s.get("unet", "random_crop64", (bool,), "image_size")
    dropout = s.get("unet", "dropout", (float, int), "dropout")
    predict = s.get("unet", "predict", (str,), "prediction")
    if predict is not None and predict.lower() not in ("x", "eps", "v"):
        raise ModelLoadError(f"{where}: config key 'unet.predict' is {predict!r}; ldseg_rt samples models that "
                             "predict 'x', 'eps' or 'v'")
    schedule = s.get("diffusion", "noise_schedule", (str,))
    if schedule is not None and schedule != "cosine":
        raise ModelLoadError(f"{where}: config key 'diffusion.noise_schedule' is {schedule!r}; ldseg_rt's "
                             "pixel-space diffusion has the cosine schedule only")
    scale = s.get("diffusion", "input_scale", (float, int), "input_scale")
    variance = s.get("diffusion", "var_type", (str,), "variance")
    if variance is not None and variance not in ("large", "small"):
        raise ModelLoadError(f"{where}: config key 'diffusion.var_type' is {variance!r}, expected 'large' or 'small'")
    sampler = s.get("sampling", "sampler_type", (str,), "sampler")
    if sampler is not None and sampler not in ("ddpm", "ddim"):
        raise ModelLoadError(f"{where}: config key 'sampling.sampler_type' is {sampler!r}, expected 'ddpm' or 'ddim'")
    steps = s.get("sampling", "num_timesteps", (int,), "steps")
    if steps is not None and steps < 1:
        raise ModelLoadError(f"{where}: config key 'sampling.num_timesteps' is {steps}, expected >= 1")
    clip = s.get("sampling", "clip_denoised", (bool,), "clip")
    weights = s.get("training", "loss_weights", (str,))

    taken = {"heads": heads, "image_size": None if crop64 is None else 64 if crop64 else 128,  # create_unet_from_args
             "dropout": None if dropout is None else float(dropout),
             "prediction": None if predict is None else predict.lower(),
             "input_scale": None if scale is None else float(scale), "variance": variance, "sampler": sampler,
             "steps": steps, "clip": None if clip is None else 1.0 if clip else 0.0}  # clamp(-1, 1), or none
    for field, value in taken.items():
        if value is None:
            s.fallback(field, fields)
        else:
            fields[field] = value
    if weights in LOSS_WEIGHTS or (weights or "").startswith("sigmoid_"):  # training only
        fields["loss_weighting"] = LOSS_WEIGHTS.get(weights, "sigmoid")
        s.provenance["loss_weighting"] = "checkpoint config training.loss_weights"
    else:
        s.fallback("loss_weighting", fields, "" if weights is None else f" (training.loss_weights {weights!r} unknown)")
    for field in FIXED:
        s.fallback(field, fields)

    final_act = s.get("unet", "final_act", (str,))
    if final_act is not None:  # our U-Net ends in tanh exactly when it predicts x (the original's tanh_if_x)
        act, predicts_x = final_act.lower(), fields["prediction"] == "x"
        if act not in ("tanh_if_x", "tanh", "none") or act != "tanh_if_x" and (act == "tanh") != predicts_x:
            raise ModelLoadError(f"{where}: config key 'unet.final_act' is {final_act!r} with prediction "
                                 f"{fields['prediction']!r}; ldseg_rt's U-Net applies tanh exactly when it predicts x")
    fields.update(image_mean=IMAGE_MEAN, image_std=IMAGE_STD)  # recorded, so a bundle's torch model rebuilds it
    s.provenance["image_mean"] = s.provenance["image_std"] = "the original's data.py, A.Normalize() defaults"
    try:
        cfg = AmbiguousConfig(name=name or f"ambdiffseg{fields['image_size']}", **fields)
    except ConfigError as e:
        raise ModelLoadError(f"{where}: the checkpoint's settings do not make a valid U-Net: {e}") from None
    return cfg, dict(sorted(s.provenance.items()))


# ----------------------------------------------------------------------------------------------
# The mapping
# ----------------------------------------------------------------------------------------------

RES_BLOCK = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_proj", "emb_layers.1"),
             ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("skip", "skip_connection"))
ATTENTION = (("norm", "norm"), ("qkv", "qkv"), ("proj", "proj_out"))  # qkv, proj: Conv1d(k=1) there


def key_pairs(unet: AmbiguousUNet) -> list[tuple[str, str, bool]]:
    """(our key, the original's key, whether theirs is a Conv1d kernel with one axis less) for every
    tensor of our U-Net's state dict, in its order."""
    pairs: list[tuple[str, str, bool]] = []

    def add(ours: str, theirs: str, module: nn.Module, conv1d: bool = False) -> None:
        for name, _ in module.named_parameters(recurse=False):
            pairs.append((f"{ours}.{name}", f"{theirs}.{name}", conv1d and name == "weight"))

    def res_block(ours: str, theirs: str, block) -> None:
        for our_name, their_name in RES_BLOCK:
            add(f"{ours}.{our_name}", f"{theirs}.{their_name}", getattr(block, our_name))

    def attention(ours: str, theirs: str, block: MultiHeadAttention) -> None:
        for our_name, their_name in ATTENTION:
            add(f"{ours}.{our_name}", f"{theirs}.{their_name}", getattr(block, our_name), conv1d=our_name != "norm")

    add("time_mlp.1", "time_embed.0", unet.time_mlp[1])
    add("time_mlp.3", "time_embed.2", unet.time_mlp[3])
    add("stem", "input_blocks.0.0", unet.stem)
    for i, step in enumerate(unet.encoder):
        if isinstance(step, Downsample):
            add(f"encoder.{i}.conv", f"input_blocks.{i + 1}.0.op", step.conv)
            continue
        res_block(f"encoder.{i}.res", f"input_blocks.{i + 1}.0", step.res)
        if isinstance(step.attention, MultiHeadAttention):
            attention(f"encoder.{i}.attention", f"input_blocks.{i + 1}.1", step.attention)
    j = 0
    for i, block in enumerate(unet.middle):
        res_block(f"middle.{i}.res", f"middle_block.{j}", block.res)
        j += 1
        if isinstance(block.attention, MultiHeadAttention):
            attention(f"middle.{i}.attention", f"middle_block.{j}", block.attention)
            j += 1
    for i, block in enumerate(unet.decoder):
        res_block(f"decoder.{i}.res", f"output_blocks.{i}.0", block.res)
        k = 1
        if isinstance(block.attention, MultiHeadAttention):
            attention(f"decoder.{i}.attention", f"output_blocks.{i}.1", block.attention)
            k = 2
        if isinstance(block.upsample, nn.Sequential):
            add(f"decoder.{i}.upsample.1", f"output_blocks.{i}.{k}.conv", block.upsample[1])
    add("out_norm", "out.1", unet.out_norm)
    add("out_conv", "out.3", unet.out_conv)
    covered = {ours for ours, _, _ in pairs}
    if covered != set(unet.state_dict()):  # our U-Net changed without this mapping: a bug here, not in the file
        raise RuntimeError(f"AmbDiffSeg key mapping out of date: unmapped {sorted(set(unet.state_dict()) - covered)}")
    return pairs


def _mapped_state_dict(unet: AmbiguousUNet, theirs: dict, where: str) -> dict[str, torch.Tensor]:
    """Our U-Net's state dict from the original's, everything checked before anything is returned."""
    pairs = key_pairs(unet)
    ours = unet.state_dict()
    expected = {their: ours[our].shape[:-1] if conv1d else ours[our].shape for our, their, conv1d in pairs}
    unexpected = [k for k in theirs if k not in expected]
    if unexpected:
        raise ModelLoadError(f"{where}: key {unexpected[0]!r} is not a tensor of the U-Net ldseg_rt builds for this "
                             f"configuration ({len(unexpected)} such key(s): {unexpected[:5]})")
    missing = [k for k in expected if k not in theirs]
    if missing:
        raise ModelLoadError(f"{where}: missing key {missing[0]!r} ({len(missing)} missing: {missing[:5]})")
    mapped = {}
    for our, their, conv1d in pairs:
        value = theirs[their]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            raise ModelLoadError(f"{where}: key {their!r} is {kind}, not a floating-point tensor")
        if tuple(value.shape) != tuple(expected[their]):
            raise ModelLoadError(f"{where}: key {their!r} has shape {list(value.shape)}, the configuration needs "
                                 f"{list(expected[their])}")
        value = value.detach().to(torch.float32)
        mapped[our] = (value[..., None] if conv1d else value).clone()
    for our, value in mapped.items():
        if not torch.isfinite(value).all():
            their = next(t for o, t, _ in pairs if o == our)
            raise ModelLoadError(f"{where}: key {their!r} holds NaN or Inf")
    return mapped


def load_ambdiffseg_model(path, name: str | None = None) -> AmbiguousModel:
    """An AmbiguousModel with the weights of an original AmbDiffSeg checkpoint (train.py's .pt, or a
    .safetensors of its state dict), configured from the checkpoint's own config; ready for
    Segmenter(model) and export_bundle. Anything it cannot honour is a ModelLoadError naming the file
    and the key; nothing is half-loaded (the model exists only once every tensor has been checked).
    name: the configuration's name (default ambdiffseg128, or ambdiffseg64 for a crop64 run)."""
    where = repr(str(path))
    state_dict, config = read_ambdiffseg_checkpoint(path)
    cfg, provenance = ambdiffseg_config(config, state_dict, where, name)
    model = AmbiguousModel.from_config(cfg)  # random weights (the caller's RNG untouched), all replaced below
    model.denoiser.load_state_dict(_mapped_state_dict(model.denoiser, state_dict, where), strict=True)
    model.input_statistics = None  # the original records none
    model.slice_axis = None  # 2-D LIDC crops
    # Our scaling of each image to [0, 1]. The original feeds its LIDC crops' stored [0, 1] values as
    # uint8 (data.py: clip(v * 255).astype(uint8)), which no preprocessing mode of ours reproduces.
    model.preprocessing = ROBUST
    model.ambdiffseg_provenance = provenance
    return model.eval()
