"""The one-step img2img transform of a turbo model, readable top to bottom.

For strength s in (0, 1]: t = round(s * (T - 1)); x_t = sqrt(a_t) z + sqrt(1 - a_t) eps; one UNet
call; x0 from the scheduler's prediction type; decode. Every row of a batch has its own timestep,
prompt embedding, guidance scale and noise. `tests/test_onestep.py` proves a row equals diffusers'
own `StableDiffusionImg2ImgPipeline` run for one step at the same timestep.
"""

from __future__ import annotations

import torch

from pipeline.models import ModelBundle


def strength_to_timestep(strength: float, num_train_timesteps: int = 1000) -> int:
    return round(strength * (num_train_timesteps - 1))


class OneStepImg2Img:
    def __init__(self, model: ModelBundle) -> None:
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
    ) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> stylized images (B, 3, H, W) in [0, 1].

        timesteps: (B,) integer; noise: (B, C, H/f, W/f); guidance_scale: (B,) where rows > 1 use
        classifier-free guidance against `negative_embeds`.
        """
        # 1. Encode to latents (the VAE takes [-1, 1]).
        latents = self._encode(images.to(self.device, self.dtype) * 2.0 - 1.0)

        # 2. Noise the latents to each row's timestep.
        alpha = self.alphas_cumprod[timesteps.to(self.device)].view(-1, 1, 1, 1)
        sqrt_alpha = alpha.sqrt()
        sqrt_one_minus_alpha = (1.0 - alpha).sqrt()
        x_t = sqrt_alpha * latents.float() + sqrt_one_minus_alpha * noise.to(self.device, torch.float32)

        # 3. One UNet call; rows that ask for guidance get an unconditional twin in the same batch.
        model_input = x_t.to(self.dtype)
        t = timesteps.to(self.device)
        use_cfg = guidance_scale is not None and negative_embeds is not None and bool((guidance_scale > 1.0).any())
        if use_cfg:
            assert guidance_scale is not None and negative_embeds is not None
            both = self.unet(
                torch.cat((model_input, model_input)),
                torch.cat((t, t)),
                encoder_hidden_states=torch.cat((prompt_embeds, negative_embeds)).to(self.dtype),
                return_dict=False,
            )[0].float()
            cond, uncond = both.chunk(2)
            scale = torch.where(guidance_scale > 1.0, guidance_scale, 1.0).to(self.device).view(-1, 1, 1, 1)
            model_output = uncond + scale * (cond - uncond)
        else:
            model_output = self.unet(
                model_input, t, encoder_hidden_states=prompt_embeds.to(self.dtype), return_dict=False
            )[0].float()

        # 4. The clean latents x0 from the model's prediction.
        if self.prediction_type == "epsilon":
            x0 = (x_t - sqrt_one_minus_alpha * model_output) / sqrt_alpha
        elif self.prediction_type == "v_prediction":
            x0 = sqrt_alpha * x_t - sqrt_one_minus_alpha * model_output
        elif self.prediction_type == "sample":
            x0 = model_output
        else:
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

        # 5. Decode back to [0, 1] pixels.
        decoded = self.vae.decode(x0.to(self.dtype) / self.scaling_factor, return_dict=False)[0]
        return (decoded.float() / 2.0 + 0.5).clamp(0.0, 1.0)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        encoded = self.vae.encode(images.contiguous(memory_format=torch.channels_last))
        if hasattr(encoded, "latents"):
            latents = encoded.latents
        else:
            latents = encoded.latent_dist.mode()
        return latents * self.scaling_factor
