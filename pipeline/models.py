"""Model specs -> loaded diffusers components, always through `from_pretrained`.

Specs:
- a Hugging Face id (default `stabilityai/sd-turbo`, with the tiny VAE `madebyollin/taesd`) or a
  local diffusers folder (with its own VAE); `[model] vae` names another VAE for either. Hub files
  come from the standard cache or are downloaded once (`pipeline.hub`); loading itself is offline;
- `tiny`, `tiny-sd15`, `tiny-sdxl`: small random-weight twins of each family, built once under
  `<data_dir>/models/<name>` in diffusers format and loaded back from there, so tests exercise the
  real loading path;
- `arch:<name>` (`sd-turbo`, `sd15`, `sdxl-turbo`): the real architecture from `pipeline/archs/<name>/`
  with random weights, for measuring speed where weights cannot be downloaded;
- a single `.safetensors` file in the original layout (`pipeline.single_file`): its configs from `[model] config`
  (a diffusers folder or hub id) or the family's architecture, its tokenizers from there or the family's
  reference repository in the hub cache, its VAE its own unless `[model] vae` names one.

Every model belongs to a family (`pipeline.families`), told from its own config unless `[model] family`
says otherwise: it decides the text conditioning (one encoder, or SDXL's two with pooled embeddings and
size micro-conditioning), the default tiny VAE and the default number of steps.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, EulerDiscreteScheduler, LCMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from pipeline import hub, single_file
from pipeline.families import AUTO, Family, FamilyError, detect_family, family_named
from pipeline.hub import Progress
from pipeline.lora_names import LORA_PATTERNS

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "stabilityai/sd-turbo"
AUTO_VAE = "auto"
TINY = "tiny"
# The built-in random-weight twins, and the family each is a twin of.
TWINS = {TINY: "sd-turbo", "tiny-sd15": "sd15", "tiny-sdxl": "sdxl"}
ARCH_PREFIX = "arch:"
# The architectures' configs ship inside the package (wheels install unpacked: a real folder).
ARCH_DIR = Path(str(importlib.resources.files("pipeline") / "archs"))
# What a diffusers Stable Diffusion repository must hold for the one-step transform (no safety checker).
MODEL_PATTERNS = [
    "unet/config.json",
    "unet/*.safetensors",
    "unet/*.bin",
    "text_encoder/config.json",
    "text_encoder/*.safetensors",
    "text_encoder/*.bin",
    "tokenizer/*",
    "scheduler/*",
]
# What SDXL adds: the second text encoder and its tokenizer.
SDXL_PATTERNS = [
    "text_encoder_2/config.json",
    "text_encoder_2/*.safetensors",
    "text_encoder_2/*.bin",
    "tokenizer_2/*",
]
LORA_FIX = (
    "Pass a LoRA diffusers can load (`[model] lcm_lora`: a hub id such as latent-consistency/lcm-lora-sdv1-5, "
    "a folder or a .safetensors file), or leave it empty"
)
VAE_PATTERNS = ["vae/config.json", "vae/*.safetensors", "vae/*.bin"]
OFFLINE_FIX = (
    "Fetch it where there is network with `python -m server download` (it lands in the hub cache), "
    "or run `--model tiny` (or STYLIZE_MODEL=tiny), or pass a local diffusers folder"
)
SINGLE_FILE_FIX = (
    "Pass a .safetensors checkpoint in the original Stable Diffusion layout (SD 1.5, SD 2.x or SDXL), "
    "with [model] config (STYLIZE_MODEL_CONFIG) naming its diffusers configs where they are not the family's own"
)
FOLDER_FIX = "Pass a diffusers folder (unet/, text_encoder/, tokenizer/, scheduler/, vae/), a hub id, or `--model tiny`"
# Without accelerate, asking diffusers for low-memory loading only earns a warning: ask for what works.
_ACCELERATE = importlib.util.find_spec("accelerate") is not None


class ModelUnavailableError(RuntimeError):
    """A model's files cannot be had or loaded: `problem` names the component, its source and why."""

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(f"{problem}. {fix}" if fix else problem)
        self.problem = problem


@dataclass
class ModelBundle:
    spec: str
    family: Family
    unet: UNet2DConditionModel
    vae: AutoencoderTiny | AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    # The LCM scheduler built from the model's own scheduler config: every family samples with its step.
    scheduler: LCMScheduler
    device: torch.device
    dtype: torch.dtype
    width: int
    height: int
    # SDXL's second text encoder (with projection: it gives the pooled embedding) and its tokenizer.
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        return vae_scale_factor(self.vae)


def vae_scale_factor(vae: AutoencoderTiny | AutoencoderKL) -> int:
    """Pixels per latent along a side, from the VAE's own config (diffusers' pipelines read it the same way)."""
    if isinstance(vae, AutoencoderTiny):
        return 2 ** (len(vae.config.encoder_block_out_channels) - 1)
    return 2 ** (len(vae.config.block_out_channels) - 1)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def load_model(
    spec: str,
    *,
    data_dir: Path,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    vae: str = AUTO_VAE,
    family: str = AUTO,
    resolution: int | None = None,
    lcm_lora: str = "",
    config: str = "",
    progress: Progress | None = None,
) -> ModelBundle:
    """Load `spec` (see the module docstring); `vae` is `AUTO_VAE`, "" (the model's own) or a hub id/folder;
    `family` is `AUTO` (told from the model's config) or a family's name; `lcm_lora` (a hub id, a
    folder or a `.safetensors` file) is a LoRA fused into the weights at load, such as
    `latent-consistency/lcm-lora-sdv1-5`, which makes an SD 1.5 checkpoint an LCM one; `config` (a diffusers
    folder or hub id) holds the configs and tokenizers a single-file `spec` loads with, "" the family's own.

    Raises `ModelUnavailableError` naming the component that could not be had and why, or the family
    that is unknown or cannot be told.
    """
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    try:
        if spec.startswith(ARCH_PREFIX):
            parts = _build_arch(spec[len(ARCH_PREFIX) :], dtype, family)
        else:
            files = fetch_model(
                spec,
                vae,
                data_dir=data_dir,
                fp16=dtype != torch.float32,
                family=family,
                config=config,
                progress=progress,
            )
            parts = _load_single_file(files, dtype) if files.checkpoint is not None else _load_files(files, dtype)
    except FamilyError as e:
        raise ModelUnavailableError(str(e)) from e
    if lcm_lora:
        _fuse_lora(parts, lcm_lora, progress)
    # from_pretrained already gave the dtype; moving without one keeps diffusers' fp32-only modules.
    parts.unet.to(device=device, memory_format=torch.channels_last).eval()
    parts.vae.to(device=device, memory_format=torch.channels_last).eval()
    for encoder in (parts.text_encoder, parts.text_encoder_2):
        if encoder is not None:
            encoder.to(device=device).eval()
    latent_size = int(parts.unet.config.sample_size)
    side = resolution or latent_size * vae_scale_factor(parts.vae)
    logger.info(
        "model loaded spec=%s family=%s device=%s dtype=%s resolution=%d", spec, parts.family.name, device, dtype, side
    )
    return ModelBundle(
        spec,
        parts.family,
        parts.unet,
        parts.vae,
        parts.text_encoder,
        parts.tokenizer,
        parts.scheduler,
        device,
        dtype,
        side,
        side,
        parts.text_encoder_2,
        parts.tokenizer_2,
    )


@dataclass(frozen=True)
class Files:
    """Where one component's files are on this machine, and how the user named them (for messages)."""

    component: str
    name: str  # a hub id or a folder, as given
    kind: Literal["hub", "folder", "built-in", "file"]
    folder: Path
    subfolder: str | None

    def __str__(self) -> str:
        return f"{self.component} {self.name!r} ({self.kind})"


@dataclass(frozen=True)
class ModelFiles:
    model: Files  # the folder holding unet/, text_encoder/, tokenizer/, scheduler/ (and SDXL's *_2/)
    vae: Files
    family: Family
    # A single-file checkpoint: the file; `model` then holds the configs it loads with, `tokenizer` its tokenizers.
    checkpoint: Path | None = None
    tokenizer: Files | None = None


def fetch_model(
    spec: str,
    vae: str = AUTO_VAE,
    *,
    data_dir: Path,
    fp16: bool,
    family: str = AUTO,
    config: str = "",
    progress: Progress | None = None,
) -> ModelFiles:
    """Every file `spec` needs, on this machine: from its folder, the hub cache, or downloaded now.

    `vae` `AUTO_VAE` means the family's tiny VAE for a hub model and the folder's own VAE for a folder
    (and the built twins); "" always the model's own. The family is told from the model's configs
    (the UNet's, the scheduler's, model_index.json) unless `family` names one.
    Raises `ModelUnavailableError`, or `FamilyError` for a family unknown or not to be told.
    """
    wanted = None if family == AUTO else family_named(family)
    if single_file.is_single_file(spec):
        return _fetch_single_file(spec, vae, wanted, config, fp16, progress)
    if spec in TWINS:
        folder = ensure_tiny_model(data_dir / "models" / spec, TWINS[spec])
        model = Files("model", spec, "built-in", folder, None)
    else:
        extra = VAE_PATTERNS if vae == "" else []
        sdxl = SDXL_PATTERNS if wanted is not None and wanted.pooled else []
        model = _locate("model", spec, MODEL_PATTERNS + sdxl + extra, fp16, progress)
    # A twin's configs are too small to tell (cross-attention 32 wide): its spec says what it twins.
    told = wanted or (family_named(TWINS[spec]) if spec in TWINS else None)
    if told is None and model.kind == "hub":
        # A hub model's VAE and SDXL parts depend on its family: told as soon as its configs are here.
        told = _told_family(model)
        if told.pooled:
            model = _locate("model", spec, MODEL_PATTERNS + SDXL_PATTERNS + extra, fp16, progress)
    if vae == AUTO_VAE:
        vae = "" if model.kind != "hub" or told is None else told.tiny_vae
    if vae == "":
        vae_files = Files("vae", model.name, model.kind, model.folder, "vae")
    else:
        vae_files = _locate("vae", vae, [p.removeprefix("vae/") for p in VAE_PATTERNS], fp16, progress)
    # A folder's family is told last, so a part that cannot be had is named before a family that cannot be told.
    return ModelFiles(model, vae_files, told or _told_family(model))


def _fetch_single_file(
    spec: str, vae: str, wanted: Family | None, config: str, fp16: bool, progress: Progress | None
) -> ModelFiles:
    """A single file's own header (its family told from its keys), configs, tokenizers and VAE."""
    path = Path(spec).expanduser()
    try:
        told = wanted or single_file.tell_family(spec, single_file.read_header(path))
    except single_file.CheckpointError as e:
        raise ModelUnavailableError(f"model {spec!r} (file): {e}", SINGLE_FILE_FIX) from e
    if config:
        patterns = single_file.CONFIG_PATTERNS + (single_file.SDXL_CONFIG_PATTERNS if told.pooled else [])
        configs = _locate("configs", config, patterns, fp16, progress)
        tokenizer = configs
    else:
        configs = Files("configs", told.name, "built-in", ARCH_DIR / told.arch, None)
        tokenizer = _locate(
            "tokenizer", told.reference, ["tokenizer/*"] + (["tokenizer_2/*"] if told.pooled else []), fp16, progress
        )
    # A file is loaded like a folder: its own VAE unless one is named.
    if vae in (AUTO_VAE, ""):
        vae_files = Files("vae", spec, "file", path.parent, None)
    else:
        vae_files = _locate("vae", vae, [p.removeprefix("vae/") for p in VAE_PATTERNS], fp16, progress)
    return ModelFiles(configs, vae_files, told, path, tokenizer)


def _told_family(model: Files) -> Family:
    """The family from the configs in the model's folder; a missing config is the usual one-line error."""
    configs = {}
    for part in ("unet", "scheduler"):
        path = model.folder / part / ("config.json" if part == "unet" else "scheduler_config.json")
        if not path.is_file():
            raise ModelUnavailableError(f"{model}: no {part} config at {path}", FOLDER_FIX)
        configs[part] = _read_json(path)
    index_path = model.folder / "model_index.json"
    index = _read_json(index_path) if index_path.is_file() else None
    return detect_family(model.name, configs["unet"], configs["scheduler"], index)


def _locate(component: str, name: str, patterns: list[str], fp16: bool, progress: Progress | None) -> Files:
    if not hub.is_hub_id(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise ModelUnavailableError(f"{component} {name!r} (folder): no such folder", FOLDER_FIX)
        return Files(component, name, "folder", folder, None)
    try:
        folder = hub.fetch(name, patterns, fp16=fp16, progress=progress)
    except hub.HubUnavailable as e:
        raise ModelUnavailableError(f"{component} {name!r} (hub): {e}", OFFLINE_FIX) from e
    return Files(component, name, "hub", folder, None)


@dataclass
class _Parts:
    family: Family
    unet: UNet2DConditionModel
    vae: Any
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: LCMScheduler
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None


def fetch_lora(source: str, progress: Progress | None = None) -> Path:
    """A LoRA on this machine: a file or folder as given, or a hub repository's from the cache or fetched now."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not hub.is_hub_id(source):
        raise ModelUnavailableError(f"LoRA {source!r} (file): no such file or folder", LORA_FIX)
    return _locate("LoRA", source, LORA_PATTERNS, False, progress).folder


def _fuse_lora(parts: _Parts, source: str, progress: Progress | None) -> None:
    """Fuse the LoRA at `source` into the UNet (and text encoders, where it has weights for them) with
    diffusers' own loaders: they read the kohya and diffusers formats; nothing here maps keys."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    path = fetch_lora(source, progress)
    common = {"vae": parts.vae, "text_encoder": parts.text_encoder, "tokenizer": parts.tokenizer}
    common |= {"unet": parts.unet, "scheduler": parts.scheduler}
    if parts.family.pooled:
        pipe: Any = StableDiffusionXLPipeline(
            **common, text_encoder_2=parts.text_encoder_2, tokenizer_2=parts.tokenizer_2
        )
    else:
        pipe = StableDiffusionPipeline(
            **common, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    try:
        if path.is_file():
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="fused")
        else:
            pipe.load_lora_weights(str(path), adapter_name="fused")
        pipe.fuse_lora()
        pipe.unload_lora_weights()  # the adapter's layers go; the fused weights stay
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelUnavailableError(f"LoRA {source!r}: diffusers could not load it ({e})", LORA_FIX) from e
    logger.info("LoRA fused source=%s", source)


def _load_files(files: ModelFiles, dtype: torch.dtype) -> _Parts:
    """Each component with diffusers' and transformers' `from_pretrained`, from folders on this machine."""

    def part(component: str) -> Files:
        return replace(files.model, component=component, subfolder=component)

    unet = _load(
        part("unet"),
        lambda f, s, v: UNet2DConditionModel.from_pretrained(
            f, subfolder=s, variant=v, torch_dtype=dtype, low_cpu_mem_usage=_ACCELERATE
        ),
        dtype,
    )
    text_encoder = _load(
        part("text_encoder"),
        lambda f, s, v: CLIPTextModel.from_pretrained(f, subfolder=s, variant=v, dtype=dtype),
        dtype,
    )
    tokenizer = _load(part("tokenizer"), lambda f, s, v: CLIPTokenizer.from_pretrained(f, subfolder=s), dtype)
    # Whatever scheduler the model ships, its config (betas, prediction type) builds the LCM scheduler.
    scheduler = _load(
        part("scheduler"), lambda f, s, v: _lcm_scheduler(LCMScheduler.load_config(f, subfolder=s)), dtype
    )
    parts = _Parts(files.family, unet, _load_vae(files.vae, dtype), text_encoder, tokenizer, scheduler)
    if files.family.pooled:
        parts.text_encoder_2 = _load(
            part("text_encoder_2"),
            lambda f, s, v: CLIPTextModelWithProjection.from_pretrained(f, subfolder=s, variant=v, dtype=dtype),
            dtype,
        )
        parts.tokenizer_2 = _load(
            part("tokenizer_2"), lambda f, s, v: CLIPTokenizer.from_pretrained(f, subfolder=s), dtype
        )
    return parts


def _load_single_file(files: ModelFiles, dtype: torch.dtype) -> _Parts:
    """The UNet and text encoders (and the file's own VAE) by diffusers' single-file loaders; tokenizers,
    scheduler and a named VAE as for a folder."""
    assert files.checkpoint is not None and files.tokenizer is not None
    with ExitStack() as stack:
        configs = files.model.folder
        if files.model.kind == "built-in":
            configs = stack.enter_context(single_file.arch_configs(configs))
        try:
            loaded = single_file.load(files.checkpoint, configs, files.family, dtype, own_vae=files.vae.kind == "file")
        except single_file.CheckpointError as e:
            raise ModelUnavailableError(f"model {str(files.checkpoint)!r} (file): {e}", SINGLE_FILE_FIX) from e
        scheduler = _load(
            replace(files.model, folder=configs, subfolder="scheduler"),
            lambda f, s, v: _lcm_scheduler(LCMScheduler.load_config(f, subfolder=s)),
            dtype,
        )

    def tokenizer(subfolder: str) -> CLIPTokenizer:
        assert files.tokenizer is not None
        where = replace(files.tokenizer, component=subfolder, subfolder=subfolder)
        return _load(where, lambda f, s, v: CLIPTokenizer.from_pretrained(f, subfolder=s), dtype)

    vae = loaded.vae if loaded.vae is not None else _load_vae(files.vae, dtype)
    parts = _Parts(files.family, loaded.unet, vae, loaded.text_encoder, tokenizer("tokenizer"), scheduler)
    if files.family.pooled:
        parts.text_encoder_2 = loaded.text_encoder_2
        parts.tokenizer_2 = tokenizer("tokenizer_2")
    return parts


def _load_vae(files: Files, dtype: torch.dtype) -> AutoencoderTiny | AutoencoderKL:
    vae: AutoencoderTiny | AutoencoderKL = _load(
        files,
        lambda f, s, v: _vae_class(f, s).from_pretrained(
            f, subfolder=s, variant=v, torch_dtype=dtype, low_cpu_mem_usage=_ACCELERATE
        ),
        dtype,
    )
    return vae


def _lcm_scheduler(config: dict[str, Any]) -> LCMScheduler:
    # A scheduler config of another class carries keys LCM does not take: keep the ones it does.
    scheduler: LCMScheduler = LCMScheduler.from_config(config)
    return scheduler


def _load(files: Files, loader: Callable[[str, str | None, str | None], Any], dtype: torch.dtype) -> Any:
    """`loader(folder, subfolder, variant)`, its failure turned into one line naming the component."""
    where = files.folder / files.subfolder if files.subfolder else files.folder
    if not where.is_dir():
        raise ModelUnavailableError(f"{files}: no {files.subfolder or 'model'} folder in {files.folder}", FOLDER_FIX)
    try:
        return loader(str(files.folder), files.subfolder, _variant(where, dtype))
    except (OSError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelUnavailableError(f"{files}: cannot load from {where} ({first})", FOLDER_FIX) from e


def _variant(folder: Path, dtype: torch.dtype) -> str | None:
    """ "fp16" when the folder's fp16 weights are wanted (a half-precision run) or are all it has."""
    half = any(folder.glob("*.fp16.safetensors")) or any(folder.glob("*.fp16.bin"))
    full = any(p for p in folder.iterdir() if p.name.endswith(hub.WEIGHTS) and ".fp16." not in p.name)
    return "fp16" if half and (dtype != torch.float32 or not full) else None


def _vae_class(folder: str, subfolder: str | None) -> type[AutoencoderTiny] | type[AutoencoderKL]:
    config = AutoencoderTiny.load_config(folder, subfolder=subfolder)
    return AutoencoderKL if config.get("_class_name") == "AutoencoderKL" else AutoencoderTiny


def _build_arch(name: str, dtype: torch.dtype, family: str) -> _Parts:
    folder = ARCH_DIR / name
    if not folder.is_dir():
        known = sorted(p.name for p in ARCH_DIR.iterdir() if p.is_dir())
        raise ModelUnavailableError(f"unknown architecture {name!r}; known: {known}")
    unet_config = _read_json(folder / "unet.json")
    scheduler_config = _read_json(folder / "scheduler.json")
    told = (
        detect_family(f"{ARCH_PREFIX}{name}", unet_config, scheduler_config) if family == AUTO else family_named(family)
    )
    with _seeded():
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderTiny.from_config(_read_json(folder / "vae.json"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**_read_json(folder / "text_encoder.json")))
        parts = _Parts(told, unet, vae, text_encoder, byte_level_tokenizer(), _lcm_scheduler(scheduler_config))
        if told.pooled:
            config = CLIPTextConfig(**_read_json(folder / "text_encoder_2.json"))
            parts.text_encoder_2 = CLIPTextModelWithProjection(config)
            parts.tokenizer_2 = byte_level_tokenizer()
    for module in (parts.unet, parts.vae, parts.text_encoder, parts.text_encoder_2):
        if module is not None:
            module.to(dtype)
    return parts


@contextmanager
def _seeded(seed: int = 0) -> Iterator[None]:
    """Random weights from a fixed seed, leaving the caller's random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def byte_level_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer made here: one token per byte (with and without the word-end mark), no merges.

    CLIP's own vocabulary cannot be downloaded offline; any prompt still tokenizes to valid ids.
    """
    byte_chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for char in byte_chars:
            vocab[char + suffix] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible map of the 256 byte values onto printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = []
    extra = 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _visible_init(vae: AutoencoderTiny) -> None:
    """Re-initialise the tiny VAE so its pictures have contrast.

    With PyTorch's default init the ReLU stack shrinks every signal and the decoder returns a
    uniformly black frame, so tests could not tell one prompt's output from another's. He-normal
    weights keep the signal alive; the last layer is scaled to land around mid-grey.
    """
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    last = vae.decoder.layers[-1]
    with torch.no_grad():
        last.weight.mul_(0.07)
        last.bias.fill_(0.5)


def ensure_tiny_model(folder: Path, family: str = "sd-turbo") -> Path:
    """Build a tiny twin of `family` once (seeded random weights) and save it in diffusers format."""
    if (folder / "model_index.json").is_file():
        _drop_stale_vae_key(folder)  # folders built by earlier versions
        return folder
    logger.info("building the tiny %s model at %s", family, folder)
    sdxl = family_named(family).pooled
    with _seeded():
        # SDXL's UNet: the text_time added conditioning (pooled embedding + six size numbers, 8 wide each).
        xl = dict(addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64 if sdxl else 32,  # SDXL: both encoders' hidden states side by side
            attention_head_dim=8,
            norm_num_groups=16,
            **(xl if sdxl else {}),
        )
        vae = AutoencoderTiny(
            encoder_block_out_channels=(16, 16, 16, 16),
            decoder_block_out_channels=(16, 16, 16, 16),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
        )
        _visible_init(vae)
        text_encoder = CLIPTextModel(_tiny_text_config())
        text_encoder_2 = CLIPTextModelWithProjection(_tiny_text_config(projection_dim=32)) if sdxl else None
    scheduler_class = LCMScheduler if family == "sd15" else EulerDiscreteScheduler
    scheduler = scheduler_class(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="trailing",
        steps_offset=1,
    )

    def save(partial: Path) -> None:
        unet.save_pretrained(partial / "unet")
        vae.save_pretrained(partial / "vae")
        text_encoder.save_pretrained(partial / "text_encoder")
        byte_level_tokenizer().save_pretrained(partial / "tokenizer")
        scheduler.save_pretrained(partial / "scheduler")
        index = dict(TINY_INDEX, scheduler=["diffusers", scheduler_class.__name__])
        if text_encoder_2 is not None:
            text_encoder_2.save_pretrained(partial / "text_encoder_2")
            byte_level_tokenizer().save_pretrained(partial / "tokenizer_2")
            index = TINY_XL_INDEX
        _drop_stale_vae_key(partial)
        (partial / "model_index.json").write_text(json.dumps(index, indent=2))

    build_once(folder, save, "model_index.json")
    return folder


def build_once(folder: Path, save: Callable[[Path], object], marker: str) -> None:
    """`save` a built twin into a folder of this process's own, then rename it into place: the workers
    of a cluster may all build it at once on a fresh data dir (the same seeded weights: the first one in
    stays). `marker` is the file a finished folder holds."""
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    save(partial)
    try:
        partial.rename(folder)
    except OSError:
        if not (folder / marker).is_file():
            raise
        shutil.rmtree(partial, ignore_errors=True)


def _tiny_text_config(**extra: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
        **extra,
    )


# model_index.json of the tiny models, so that diffusers' own pipelines load the folders too (the tests do).
TINY_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderTiny"],
}
TINY_XL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderTiny"],
}


def _drop_stale_vae_key(folder: Path) -> None:
    """AutoencoderTiny saves a `block_out_channels` it does not take back (a warning at every load): drop it."""
    path = folder / "vae" / "config.json"
    config = json.loads(path.read_text())
    if config.pop("block_out_channels", None) is not None:
        path.write_text(json.dumps(config, indent=2, sort_keys=True))
