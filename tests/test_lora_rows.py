"""LoRAs per row: a batch whose rows wear different LoRAs (diffusers' and kohya's layouts, other ranks
and alphas, one row two at once, one none) equals diffusers' img2img pipeline with those LoRAs loaded
and set (`set_adapters` with the row's scales) run one row at a time, on the SD 1.5 twin in fp32.
Changing LoRAs and scales keeps every slot tensor where it was and adds no graph key (no re-capture);
slots are reused least recently used first; LoRAs that cannot be worn fail only their own rows with
an error naming them."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_kohya
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import save_file

from pipeline import Engine, FrameParams, load_model
from pipeline.contract import MAX_LORA_SCALE
from pipeline.lora_files import LoraError
from pipeline.models import ModelBundle
from tests.test_families import _batched, _images, assert_rows_equal_diffusers

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


def _random_lora(unet: UNet2DConditionModel, rank: int, alpha: int, targets: list[str], seed: int) -> dict:
    """A PEFT LoRA of `unet` with random A and B (PEFT starts B at zero, which changes nothing), its state dict."""
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets), adapter_name=f"made{seed}")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if f"made{seed}" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    state = get_peft_model_state_dict(unet, adapter_name=f"made{seed}")
    unet.delete_adapters(f"made{seed}")
    return state


@pytest.fixture(scope="module")
def loras(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four LoRAs of the SD 1.5 twin: diffusers' layout at ranks 4 and 8 (the second on feed-forward and
    the 1x1 proj_in/proj_out convolutions too), kohya's layout at rank 2 with alpha 1 (scaled by 1/2),
    and a .safetensors file of rank 6."""
    load_model("tiny-sd15", data_dir=model_cache.parent, device=torch.device("cpu"))
    unet = UNet2DConditionModel.from_pretrained(model_cache / "tiny-sd15", subfolder="unet")
    root = tmp_path_factory.mktemp("loras")
    made = {}
    for name, rank, targets in (("a", 4, ATTENTION), ("b", 8, ["to_q", "to_v", "ff.net.2", "proj_in", "proj_out"])):
        folder = made[name] = root / name
        layers = _random_lora(unet, rank, rank, targets, seed=rank)
        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in _random_lora(unet, 2, 2, ATTENTION, 2).items()})
    kohya = {k: torch.tensor(1.0) if k.endswith(".alpha") else v for k, v in kohya.items()}
    assert all(k.startswith("lora_unet_") for k in kohya)
    save_file(kohya, made.setdefault("kohya", root / "kohya.safetensors"))
    StableDiffusionPipeline.save_lora_weights(
        root / "d", unet_lora_layers=_random_lora(unet, 6, 6, ["to_k", "ff.net.0.proj"], 6), safe_serialization=True
    )
    made["d"] = root / "d" / "pytorch_lora_weights.safetensors"
    return made


@pytest.fixture
def model(model_cache: Path) -> ModelBundle:
    return load_model("tiny-sd15", data_dir=model_cache.parent, device=torch.device("cpu"))


def _rows(loras: dict[str, Path]) -> list[FrameParams]:
    a, b, kohya, d = (str(loras[k]) for k in ("a", "b", "kohya", "d"))
    return [
        FrameParams(prompt="a watercolor fox", strength=0.9, seed=11, num_inference_steps=2, loras=((a, 0.8),)),
        FrameParams(
            prompt="oil portrait",
            strength=0.7,
            seed=33,
            num_inference_steps=2,
            negative_prompt="blurry",
            guidance_scale=2.5,
            loras=((b, 1.0),),
        ),
        FrameParams(prompt="neon city", strength=0.5, seed=22, num_inference_steps=1, loras=((kohya, -1.5),)),
        FrameParams(prompt="ink", strength=1.0, seed=44, num_inference_steps=3, loras=((d, 1.3),)),
        FrameParams(prompt="dusk", strength=0.6, seed=55, num_inference_steps=2),
        FrameParams(
            prompt="a watercolor fox", strength=0.8, seed=66, num_inference_steps=1, loras=((a, 0.6), (b, 1.2))
        ),
    ]


def _placed(engine: Engine, rows: list[FrameParams]) -> list[FrameParams]:
    placed = engine.place_loras(rows)
    assert all(isinstance(row, FrameParams) for row in placed), placed
    return placed  # type: ignore[return-value]


def test_a_batch_of_rows_with_their_own_loras_equals_diffusers_row_by_row(
    model: ModelBundle, model_cache: Path, loras: dict[str, Path]
) -> None:
    rows = _rows(loras)
    engine = Engine(model, max_batch=len(rows), lora_slots=4, lora_max_rank=16)
    images = _images(len(rows), model.width)
    got = _batched(model, images, _placed(engine, rows), engine)

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(model_cache / "tiny-sd15")
    for name, path in loras.items():
        where = {"weight_name": path.name} if path.is_file() else {}
        pipe.load_lora_weights(str(path.parent if path.is_file() else path), adapter_name=name, **where)
    names = {str(path): name for name, path in loras.items()}
    for index, row in enumerate(rows):
        if row.loras:
            pipe.enable_lora()
            pipe.set_adapters([names[s] for s, _ in row.loras], [scale for _, scale in row.loras])
        else:
            pipe.disable_lora()
        assert_rows_equal_diffusers(pipe, images[index : index + 1], [row], got[index : index + 1])
    # The LoRAs matter: without them the rows differ.
    plain = [FrameParams(**{**row.__dict__, "loras": (), "lora_slots": ()}) for row in rows]
    assert (_batched(model, images, plain, engine) - got)[[0, 1, 2, 3, 5]].abs().mean() > 1e-3


def test_changing_loras_and_scales_moves_no_slot_and_adds_no_graph_key(
    model: ModelBundle, loras: dict[str, Path]
) -> None:
    engine = Engine(model, max_batch=2, lora_slots=2, lora_max_rank=16)
    assert engine.lora_bank is not None
    frame = np.random.default_rng(0).integers(16, 236, (model.height * 3 // 2, model.width), dtype=np.uint8)
    a, b, kohya, d = (str(loras[k]) for k in ("a", "b", "kohya", "d"))
    looks = [((a, 1.0), (b, 0.5)), ((kohya, 1.0), (d, 0.5)), ((a, -0.7), (d, 2.0)), ((b, 1.0), (kohya, 0.3))]
    outputs, addresses, keys = [], [], []
    engine.start()
    try:
        for first, second in looks:
            rows = [
                FrameParams(prompt="fox", strength=0.7, seed=1, num_inference_steps=1, loras=(first,)),
                FrameParams(prompt="fox", strength=0.7, seed=1, num_inference_steps=1, loras=(second,)),
            ]
            outputs.append([engine.submit(f"s{i}", frame, row).result(timeout=60) for i, row in enumerate(rows)])
            addresses.append({n: (d.data_ptr(), u.data_ptr()) for n, (d, u) in engine.lora_bank.weights.items()})
            keys.append(engine.runner.graph_keys())
    finally:
        engine.stop()
    assert engine.lora_slots.evictions >= 3  # four LoRAs through two slots
    assert all(found == addresses[0] for found in addresses)
    assert all(found == keys[0] for found in keys)
    # ...and the look did change each time.
    for before, after in itertools.pairwise(outputs):
        assert np.abs(before[0].astype(int) - after[0].astype(int)).mean() > 0.5


def test_slots_go_least_recently_used_first_and_a_batch_never_evicts_its_own(
    model: ModelBundle, loras: dict[str, Path]
) -> None:
    engine = Engine(model, max_batch=4, lora_slots=2, lora_max_rank=16)
    a, b, kohya, d = (str(loras[k]) for k in ("a", "b", "kohya", "d"))

    def row(*sources: str) -> FrameParams:
        return FrameParams(prompt="fox", strength=0.5, loras=tuple((s, 1.0) for s in sources))

    [placed_a] = _placed(engine, [row(a)])
    [placed_b] = _placed(engine, [row(b)])
    _placed(engine, [row(a)])  # a is now the most recently used: b goes next
    [placed_c] = _placed(engine, [row(kohya)])
    assert placed_c.lora_slots == placed_b.lora_slots
    assert engine.lora_slots.held() == {a: placed_a.lora_slots[0], kohya: placed_b.lora_slots[0]}
    # Three different LoRAs in a batch of two slots: the rows that fit run, the one past them fails.
    first, second, third = engine.place_loras([row(a), row(d), row(b)])
    assert isinstance(first, FrameParams) and isinstance(second, FrameParams)
    assert isinstance(third, LoraError) and "more than 2 different LoRAs in one batch" in str(third)
    assert b in str(third)
    # Ranks together above max_rank: that row fails (b's 8 + d's 6 + kohya's 2 fit in 16, with a's 4 not).
    engine = Engine(model, max_batch=4, lora_slots=4, lora_max_rank=16)
    [error] = engine.place_loras([row(a, b, d, kohya)])
    assert isinstance(error, LoraError) and "ranks together 20" in str(error)


def test_loras_that_cannot_be_worn_fail_their_rows_naming_them(
    model: ModelBundle, model_cache: Path, loras: dict[str, Path], tmp_path: Path
) -> None:
    engine = Engine(model, max_batch=2, lora_slots=2, lora_max_rank=4)
    with pytest.raises(LoraError, match=r"LoRA '/nowhere/x.safetensors': .*no such file"):
        engine.load_lora("/nowhere/x.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(LoraError, match=r"junk\.safetensors.*not a LoRA diffusers can read"):
        engine.load_lora(str(junk))
    # Another family's LoRA: an SDXL-like UNet, cross-attention twice as wide (the shapes differ).
    config = dict(UNet2DConditionModel.load_config(model_cache / "tiny-sd15", subfolder="unet"))
    wide = UNet2DConditionModel.from_config({**config, "cross_attention_dim": 64})
    StableDiffusionPipeline.save_lora_weights(
        tmp_path / "wide", unet_lora_layers=_random_lora(wide, 4, 4, ATTENTION, 1)
    )
    with pytest.raises(LoraError, match=r"wide'.*does not fit this sd15 model's UNet"):
        engine.load_lora(str(tmp_path / "wide"))
    # A LoCon: weights on the resnets' 3x3 convolutions, which slots do not cover.
    unet = UNet2DConditionModel.from_config(config)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path / "locon", unet_lora_layers=_random_lora(unet, 4, 4, ["conv1"], 1)
    )
    with pytest.raises(LoraError, match=r"resnets.0.conv1', a layer LoRA slots do not cover"):
        engine.load_lora(str(tmp_path / "locon"))
    # Rank 8 in slots of max_rank 4.
    [error] = engine.place_loras([FrameParams(prompt="", strength=0.5, loras=((str(loras["b"]), 1.0),))])
    assert isinstance(error, LoraError) and "rank 8 is above the slots' max_rank 4" in str(error)
    assert engine.lora_slots.held() == {}  # the slot it had is free again
    # Through the engine: only the frame with the bad LoRA fails.
    frame = np.full((model.height * 3 // 2, model.width), 128, dtype=np.uint8)
    engine.start()
    try:
        bad = engine.submit("bad", frame, FrameParams(prompt="", strength=0.5, loras=((str(junk), 1.0),)))
        good = engine.submit("good", frame, FrameParams(prompt="", strength=0.5, loras=((str(loras["a"]), 1.0),)))
        assert good.result(timeout=60).shape == frame.shape
        with pytest.raises(LoraError, match="junk"):
            bad.result(timeout=60)
    finally:
        engine.stop()


def test_frame_params_check_their_loras() -> None:
    FrameParams(prompt="", strength=0.5, loras=(("a", MAX_LORA_SCALE), ("b", -MAX_LORA_SCALE)))
    for loras, message in (
        ((("a", 4.5),), "scale of 'a' must be in"),
        ((("a", float("nan")),), "scale of 'a'"),
        ((("a", 1.0), ("a", 0.5)), "each source at most once"),
        ((("", 1.0),), "must not be empty"),
        (tuple((str(i), 1.0) for i in range(5)), "at most 4 per frame"),
    ):
        with pytest.raises(ValueError, match=message):
            FrameParams(prompt="", strength=0.5, loras=loras)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_new_loras_and_scales_replay_the_same_graphs(model_cache: Path, loras: dict[str, Path]) -> None:
    """The captured graphs read the slots in place: after the first batch with LoRAs, other LoRAs and
    scales record no graph, change the picture, and give what the eager transform gives."""
    cuda = load_model("tiny-sd15", data_dir=model_cache.parent, device=torch.device("cuda"), dtype=torch.float16)
    frame = np.random.default_rng(0).integers(16, 236, (cuda.height * 3 // 2, cuda.width), dtype=np.uint8)
    a, b, kohya, d = (str(loras[k]) for k in ("a", "b", "kohya", "d"))
    looks = [((a, 1.0), (b, 0.5)), ((kohya, 1.0), (d, 0.5)), ((a, -0.7), (d, 2.0)), ((b, 1.0), (kohya, 0.3))]

    def run(graphs: bool) -> tuple[list[list[np.ndarray]], list[int]]:
        # A long max_wait: once both streams are known (after the first round) each round is one batch.
        engine = Engine(cuda, max_batch=2, max_wait_ms=2000, lora_slots=2, lora_max_rank=16, cuda_graphs=graphs)
        outputs, counts = [], []
        engine.start()
        try:
            for first, second in [looks[0], *looks]:
                rows = [
                    FrameParams(prompt="fox", strength=0.7, seed=1, num_inference_steps=2, loras=(first,)),
                    FrameParams(prompt="fox", strength=0.7, seed=1, num_inference_steps=2, loras=(second,)),
                ]
                futures = [engine.submit(f"s{i}", frame, row) for i, row in enumerate(rows)]
                outputs.append([f.result(timeout=120) for f in futures])
                counts.append(engine.runner.graph_count())
        finally:
            engine.stop()
        return outputs[1:], counts[1:]

    captured, counts = run(graphs=True)
    eager, _ = run(graphs=False)
    assert counts[0] >= 1 and all(count == counts[0] for count in counts), counts
    for got, expected in zip(captured, eager, strict=True):
        for row_got, row_expected in zip(got, expected, strict=True):
            assert np.abs(row_got.astype(int) - row_expected.astype(int)).max() <= 2
    for before, after in itertools.pairwise(captured):
        assert np.abs(before[0].astype(int) - after[0].astype(int)).mean() > 0.5
