"""What LoRA slots cost an `arch:` model, counted without a GPU or weights: the UNet built on the meta
device, one call's FLOPs (torch's FlopCounterMode) with and without every row reading `max_rank`
slot columns, and the slots' device memory.

    python -m bench.lora_flops --arch sd15 --batch 16 --max-ranks 16,64
    python -m bench.lora_flops --arch sdxl-turbo --batch 16 --max-ranks 16,64
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from pipeline.lora_bank import LoraBank, LoraRows
from pipeline.models import ARCH_DIR


def unet_flops(unet: UNet2DConditionModel, batch: int, config: dict[str, Any]) -> int:
    """One UNet call's FLOPs at the model's native size (`sample_size` latents), fp16 meta tensors."""
    size = int(config["sample_size"])

    def empty(*shape: int) -> torch.Tensor:
        return torch.empty(shape, device="meta", dtype=torch.float16)

    added = None
    if config.get("addition_embed_type") == "text_time":
        added = {"text_embeds": empty(batch, 1280), "time_ids": empty(batch, 6)}
    with FlopCounterMode(display=False) as counter:
        unet(
            empty(batch, int(config["in_channels"]), size, size),
            torch.zeros(batch, dtype=torch.long, device="meta"),
            encoder_hidden_states=empty(batch, 77, int(config["cross_attention_dim"])),
            added_cond_kwargs=added,
        )
    return int(counter.get_total_flops())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lora_flops", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="sd15", help="an architecture under pipeline/archs")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-ranks", default="16,64")
    parser.add_argument("--slots", type=int, default=8)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    config = json.loads((ARCH_DIR / args.arch / "unet.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config).half()
    plain = unet_flops(unet, args.batch, config)
    rows = []
    for max_rank in (int(r) for r in args.max_ranks.split(",")):
        bank = LoraBank.of(unet, args.slots, max_rank)
        columns = args.slots * max_rank + 1
        bank.weights = {
            name: (
                torch.empty(columns, i, device="meta", dtype=torch.float16),
                torch.empty(columns, o, device="meta", dtype=torch.float16),
            )
            for name, (i, o) in bank.layers.items()
        }
        bank.rows = LoraRows(
            torch.zeros(args.batch, max_rank, dtype=torch.long, device="meta"),
            torch.empty(args.batch, max_rank, device="meta", dtype=torch.float16),
        )
        worn = unet_flops(unet, args.batch, config)
        bank.rows = None
        rows.append(
            {
                "max_rank": max_rank,
                "gflop_with_loras": round(worn / 1e9),
                "ratio": round(worn / plain, 4),
                "slots_mib_fp16": round(bank.nbytes() / 2**20, 1),
            }
        )
    result = {
        "command": " ".join(["python -m bench.lora_flops", *(sys.argv[1:] if argv is None else argv)]),
        "arch": args.arch,
        "batch": args.batch,
        "slots": args.slots,
        "covered_layers": len(bank.layers),
        "gflop_plain": round(plain / 1e9),
        "rows": rows,
    }
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
