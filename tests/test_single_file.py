"""A single-file checkpoint (original LDM layout) loads through diffusers' single-file loaders, offline.

The tiny SD 1.5 twin is written here as a single `.safetensors` file in the original layout (its UNet
and text encoder; its tiny VAE has no original layout and is named by `vae`); loaded with `config`
naming the twin's folder (its configs and tokenizer), it equals the twin loaded from its folder, row by
row in a mixed batch, in fp32. diffusers ships no importable diffusers -> original converter (only
`scripts/convert_diffusers_to_original_stable_diffusion.py`), so the key names are written below from
that script's tables, for this fixture only: the loader under test maps them back with diffusers' own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from pipeline import ModelUnavailableError, load_model
from pipeline.families import FAMILIES
from pipeline.models import ARCH_DIR, ModelBundle
from pipeline.single_file import arch_configs
from tests.test_families import ROWS, _batched, _images

CPU = torch.device("cpu")
# Inside a resnet, diffusers' names -> the original's.
RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _unet_prefixes(config: dict[str, Any]) -> dict[str, str]:
    """Each diffusers UNet block's prefix -> the original layout's (input_blocks, middle_block, output_blocks)."""
    per = int(config["layers_per_block"])
    ups = [str(kind) for kind in config["up_block_types"]]
    prefixes = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.resnets.0.": "middle_block.0.",
        "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.1.": "middle_block.2.",
    }
    for i in range(len(ups)):
        for j in range(per):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{1 + i * (per + 1) + j}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{1 + i * (per + 1) + j}.1."
        for j in range(per + 1):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{i * (per + 1) + j}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{i * (per + 1) + j}.1."
        if i < len(ups) - 1:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * (per + 1)}.0.op."
            after = 2 if "CrossAttn" in ups[i] else 1
            prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{i * (per + 1) + per}.{after}."
    return prefixes


def _original_layout(model: ModelBundle) -> dict[str, torch.Tensor]:
    prefixes = _unet_prefixes(dict(model.unet.config))
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.unet.state_dict().items():
        prefix = max((p for p in prefixes if name.startswith(p)), key=len)
        rest = name[len(prefix) :]
        if ".resnets." in prefix:
            head, _, tail = rest.partition(".")
            rest = f"{RESNET[head]}.{tail}"
        state[f"model.diffusion_model.{prefixes[prefix]}{rest}"] = tensor.contiguous()
    for name, tensor in model.text_encoder.state_dict().items():
        state[f"cond_stage_model.transformer.text_model.{name.removeprefix('text_model.')}"] = tensor.contiguous()
    return state


@pytest.fixture(scope="module")
def checkpoint(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    twin = load_model("tiny-sd15", data_dir=model_cache.parent, device=CPU)
    path = tmp_path_factory.mktemp("single") / "tiny-sd15.safetensors"
    save_file(_original_layout(twin), str(path))
    return path


def test_a_single_file_equals_the_twin_it_was_written_from(model_cache: Path, checkpoint: Path) -> None:
    twin_folder = model_cache / "tiny-sd15"
    model = load_model(
        str(checkpoint), data_dir=model_cache.parent, device=CPU, config=str(twin_folder), vae=str(twin_folder / "vae")
    )
    assert model.family.name == "sd15"  # told from the file's keys
    images = _images(len(ROWS), model.width)
    twin = load_model("tiny-sd15", data_dir=model_cache.parent, device=CPU)
    torch.testing.assert_close(_batched(model, images, ROWS), _batched(twin, images, ROWS), atol=1e-4, rtol=1e-4)


def test_a_single_file_that_cannot_load_is_one_error_naming_it(
    model_cache: Path, checkpoint: Path, tmp_path: Path
) -> None:
    def load(spec: str, config: str = "") -> ModelBundle:
        return load_model(spec, data_dir=model_cache.parent, device=CPU, config=config)

    with pytest.raises(ModelUnavailableError, match=r"model '/nowhere/m.safetensors' \(file\): no such file"):
        load("/nowhere/m.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(ModelUnavailableError, match=r"corrupt\.safetensors' \(file\): not a readable \.safetensors"):
        load(str(corrupt))
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(other))
    with pytest.raises(ModelUnavailableError, match=r"cannot tell the family of model .*other\.safetensors.*no Stable"):
        load(str(other))
    # Its own VAE asked for, but the file holds none: the part is named.
    with pytest.raises(ModelUnavailableError, match=r"tiny-sd15\.safetensors' \(file\): vae: diffusers could not"):
        load(str(checkpoint), config=str(model_cache / "tiny-sd15"))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_ships_the_configs_its_single_files_load_with(family: str) -> None:
    from diffusers import AutoencoderKL, LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig

    told = FAMILIES[family]
    with arch_configs(ARCH_DIR / told.arch) as folder:
        assert UNet2DConditionModel.load_config(folder, subfolder="unet")["cross_attention_dim"] in (768, 1024, 2048)
        assert AutoencoderKL.load_config(folder, subfolder="vae")["_class_name"] == "AutoencoderKL"
        LCMScheduler.load_config(folder, subfolder="scheduler")
        for encoder in ("text_encoder", "text_encoder_2") if told.pooled else ("text_encoder",):
            CLIPTextConfig.from_pretrained(folder, subfolder=encoder, local_files_only=True)


def test_download_fetches_a_single_files_tokenizers_or_names_them(
    model_cache: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import hub
    from server.config import load_config
    from server.engine_service import ModelNotFetched, download_model

    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    env = {"STYLIZE_MODEL": str(checkpoint), "STYLIZE_DATA_DIR": str(model_cache.parent)}
    # The family's shipped configs, its tokenizers from the hub: offline and not cached, one line naming them.
    with pytest.raises(ModelNotFetched, match=r"tokenizer 'stable-diffusion-v1-5/stable-diffusion-v1-5' \(hub\)"):
        download_model(load_config(env=env), full_precision=False, progress=lambda done, total: None)
    # Configs and tokenizers from a folder: nothing to fetch.
    config = load_config(env=env | {"STYLIZE_MODEL_CONFIG": str(model_cache / "tiny-sd15")})
    assert download_model(config, full_precision=False, progress=lambda done, total: None).startswith(
        f"ready offline: model {checkpoint}, tokenizers in {model_cache / 'tiny-sd15'}"
    )
