"""The one-step img2img transform of a turbo model, readable top to bottom.

For strength s in (0, 1]: t = round(s * (T - 1)); x_t = sqrt(a_t) z + sqrt(1 - a_t) eps; one UNet
call; x0 from the scheduler's prediction type; decode. Every row of a batch has its own timestep,
prompt embedding, guidance scale and noise. `tests/test_onestep.py` proves a row equals diffusers'
own `StableDiffusionImg2ImgPipeline` run for one step at the same timestep.
"""

from __future__ import annotations

import torch

from pipeline.cached_attention import AttentionBank, AttentionRows
from pipeline.models import ModelBundle
from pipeline.temporal import LatentMemory


def strength_to_timestep(strength: float, num_train_timesteps: int = 1000) -> int:
    return round(strength * (num_train_timesteps - 1))


class OneStepImg2Img:
    def __init__(
        self, model: ModelBundle, memory: LatentMemory | None = None, attention: AttentionBank | None = None
    ) -> None:
        self.memory = memory  # each stream's last clean latent, for latent feedback
        self.attention = attention  # each stream's last frames' keys and values (installed in the UNet)
        self.unet = model.unet
        self.vae = model.vae
        self.device = model.device
        self.dtype = model.dtype
        config = model.scheduler.config
        self.num_train_timesteps = int(config.num_train_timesteps)
        self.prediction_type = str(config.prediction_type)
        self.alphas_cumprod = model.scheduler.alphas_cumprod.to(device=model.device, dtype=torch.float32)
        self.scaling_factor = float(model.vae.config.scaling_factor)

    @torch.inference_mode()
    def __call__(
        self,
        images: torch.Tensor,
        prompt_embeds: torch.Tensor,
        timesteps: torch.Tensor,
        noise: torch.Tensor,
        negative_embeds: torch.Tensor | None = None,
        guidance_scale: torch.Tensor | None = None,
        memory_slots: torch.Tensor | None = None,
        feedback: torch.Tensor | None = None,
        attention_visible: torch.Tensor | None = None,
        attention_write: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> stylized images (B, 3, H, W) float32 in [-1, 1].

        Pixels stay in the VAE's own range on both ends (the colour conversion folds the scaling in).
        timesteps: (B,) integer; noise: (B, C, H/f, W/f). With `negative_embeds` and `guidance_scale`
        (B,) the batch runs classifier-free guidance, and rows whose scale is <= 1 keep their
        conditional prediction. With `memory_slots` and `feedback` (B,) each row starts from
        `z + feedback * (previous - z)`, its stream's previous clean latent read from its slot, and
        leaves its new one there (`pipeline.temporal`). With `attention_visible` (B, 4) and
        `attention_write` (B,) too, each row's self-attention also sees its own past frames
        (`pipeline.cached_attention`). The caller decides on the host, so nothing here waits for the
        device and the whole call can be captured in a CUDA graph.
        """
        self.check_inputs(images, prompt_embeds, timesteps, noise, negative_embeds, guidance_scale)

        # 1. Encode to latents.
        latents = self._encode(images.to(self.device, self.dtype))
        remembering = self.memory is not None and memory_slots is not None and feedback is not None
        if remembering:
            assert self.memory is not None and memory_slots is not None and feedback is not None
            latents = self.memory.blend(latents.float(), memory_slots, feedback.to(self.device))

        # 2. Noise the latents to each row's timestep.
        t = timesteps.to(self.device)
        alpha = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        sqrt_alpha = alpha.sqrt()
        sqrt_one_minus_alpha = (1.0 - alpha).sqrt()
        x_t = sqrt_alpha * latents.float() + sqrt_one_minus_alpha * noise.to(self.device, torch.float32)

        # 3. One UNet call; with guidance every row gets an unconditional twin in the same batch.
        model_input = x_t.to(self.dtype)
        if self.attention is not None and attention_visible is not None and attention_write is not None:
            assert memory_slots is not None
            self.attention.rows = AttentionRows(memory_slots.to(self.device), attention_visible, attention_write)
        try:
            model_output = self._predict(model_input, t, prompt_embeds, negative_embeds, guidance_scale)
        finally:
            if self.attention is not None:
                self.attention.rows = None

        # 4. The clean latents x0 from the model's prediction.
        if self.prediction_type == "epsilon":
            x0 = (x_t - sqrt_one_minus_alpha * model_output) / sqrt_alpha
        elif self.prediction_type == "v_prediction":
            x0 = sqrt_alpha * x_t - sqrt_one_minus_alpha * model_output
        elif self.prediction_type == "sample":
            x0 = model_output
        else:
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

        if remembering:
            assert self.memory is not None and memory_slots is not None
            self.memory.remember(x0, memory_slots)

        # 5. Decode back to pixels in [-1, 1].
        decoded = self.vae.decode(x0.to(self.dtype) / self.scaling_factor, return_dict=False)[0]
        return decoded.float().clamp(-1.0, 1.0)

    def _predict(
        self,
        model_input: torch.Tensor,
        t: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_embeds: torch.Tensor | None,
        guidance_scale: torch.Tensor | None,
    ) -> torch.Tensor:
        if negative_embeds is not None and guidance_scale is not None:
            both = self.unet(
                torch.cat((model_input, model_input)),
                torch.cat((t, t)),
                encoder_hidden_states=torch.cat((prompt_embeds, negative_embeds)).to(self.dtype),
                return_dict=False,
            )[0].float()
            cond, uncond = both.chunk(2)
            scale = torch.where(guidance_scale > 1.0, guidance_scale, 1.0).to(self.device).view(-1, 1, 1, 1)
            return uncond + scale * (cond - uncond)
        return self.unet(model_input, t, encoder_hidden_states=prompt_embeds.to(self.dtype), return_dict=False)[
            0
        ].float()

    @staticmethod
    def check_inputs(
        images: torch.Tensor,
        prompt_embeds: torch.Tensor,
        timesteps: torch.Tensor,
        noise: torch.Tensor,
        negative_embeds: torch.Tensor | None,
        guidance_scale: torch.Tensor | None,
    ) -> None:
        """Every per-row input has one row per image (shapes only: nothing waits for the device)."""
        if (negative_embeds is None) != (guidance_scale is None):
            raise ValueError("negative_embeds and guidance_scale go together: pass both for guidance or neither")
        rows = {"prompt_embeds": prompt_embeds, "timesteps": timesteps, "noise": noise}
        if negative_embeds is not None and guidance_scale is not None:
            rows |= {"negative_embeds": negative_embeds, "guidance_scale": guidance_scale}
        for name, tensor in rows.items():
            if tensor.shape[0] != images.shape[0]:
                raise ValueError(f"{name} has {tensor.shape[0]} rows for {images.shape[0]} images")

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        # As diffusers' `retrieve_latents` (argmax mode): the tiny VAE gives latents, a KL VAE a
        # distribution; anything else is an error, not a guess.
        encoded = self.vae.encode(images.contiguous(memory_format=torch.channels_last))
        if hasattr(encoded, "latent_dist"):
            latents = encoded.latent_dist.mode()
        elif hasattr(encoded, "latents"):
            latents = encoded.latents
        else:
            raise AttributeError("could not access latents of the VAE's encoder output")
        return latents * self.scaling_factor
