"""The few-step img2img transform (1 to 4 UNet calls per frame), readable top to bottom.

For strength s in (0, 1] and n steps a row runs the timesteps `row_timesteps(s, n)`: t_0 = round(s * (T - 1)),
then evenly spaced down. x = sqrt(a_t0) z + sqrt(1 - a_t0) eps_0; each step is one UNet call and the LCM
scheduler's step: x0 from the prediction type, `denoised = c_out(t) x0 + c_skip(t) x`, and before every
step but the last, x = sqrt(a_next) denoised + sqrt(1 - a_next) eps_i with the row's fixed noise eps_i.
Every family samples this way (StreamDiffusion does the same for turbo models); for a turbo model at
one step it is the Euler step at t up to LCM's boundary term c_skip(t) = 0.25 / ((10 t)^2 + 0.25).

Rows with different step counts share a batch: the batch makes as many UNet calls as its largest count,
and a row of n steps takes part in the last n (right-aligned), keeping its latents untouched before.
Every row also has its own timesteps, prompt embeddings (pooled ones too for SDXL), guidance scale and
noise. `tests/test_onestep.py` and `tests/test_families.py` prove each row equals diffusers' own img2img
pipelines run alone with the LCM scheduler and the same timesteps.
"""

from __future__ import annotations

import torch

from pipeline.cached_attention import AttentionBank, AttentionRows
from pipeline.control import ControlNets
from pipeline.families import MAX_STEPS, MIN_STEPS
from pipeline.lora_bank import LoraBank, LoraRows
from pipeline.models import ModelBundle
from pipeline.temporal import LatentMemory

# LCM's consistency boundary: sigma_data of the LCM paper, as diffusers' LCMScheduler hard-codes it.
SIGMA_DATA = 0.5


def strength_to_timestep(strength: float, num_train_timesteps: int = 1000) -> int:
    return round(strength * (num_train_timesteps - 1))


def row_timesteps(strength: float, steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """A row's descending timesteps: from `strength_to_timestep(strength)` evenly down to 1/`steps` of it.

    Strictly descending and >= 1 (what diffusers' LCM scheduler asks of custom timesteps): a strength
    too low to give `steps` distinct timesteps is raised to the lowest that does.
    """
    if not MIN_STEPS <= steps <= MAX_STEPS:
        raise ValueError(f"num_inference_steps must be in [{MIN_STEPS}, {MAX_STEPS}], got {steps!r}")
    first = strength_to_timestep(strength, num_train_timesteps)
    timesteps = [max(first, steps)]
    for k in range(1, steps):
        raw = round(first * (steps - k) / steps)
        timesteps.append(max(min(raw, timesteps[-1] - 1), steps - k))
    return timesteps


class OneStepImg2Img:
    """The transform (named for the one step it began with; it now runs 1 to `MAX_STEPS`)."""

    def __init__(
        self,
        model: ModelBundle,
        memory: LatentMemory | None = None,
        attention: AttentionBank | None = None,
        loras: LoraBank | None = None,
        control: ControlNets | None = None,
    ) -> None:
        self.memory = memory  # each stream's last clean latent, for latent feedback
        self.attention = attention  # each stream's last frames' keys and values (installed in the UNet)
        self.loras = loras  # LoRA weights in device slots (hooked into the UNet's covered layers)
        self.control = control  # the ControlNets per kind (`pipeline.control`)
        self.unet = model.unet
        self.vae = model.vae
        self.device = model.device
        self.dtype = model.dtype
        config = model.scheduler.config
        self.num_train_timesteps = int(config.num_train_timesteps)
        self.prediction_type = str(config.prediction_type)
        self.alphas_cumprod = model.scheduler.alphas_cumprod.to(device=model.device, dtype=torch.float32)
        # LCM's c_skip and c_out per timestep, made in float64 as the scheduler's Python floats are.
        scaled = torch.arange(self.num_train_timesteps, dtype=torch.float64) * float(config.timestep_scaling)
        self.c_skip = (SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)).to(model.device, torch.float32)
        self.c_out = (scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5).to(model.device, torch.float32)
        self.scaling_factor = float(model.vae.config.scaling_factor)
        # SDXL's size micro-conditioning: frames run at the model's size, uncropped (original = target).
        self.time_ids = torch.tensor(
            [[model.height, model.width, 0, 0, model.height, model.width]], device=model.device, dtype=model.dtype
        )

    @torch.inference_mode()
    def __call__(
        self,
        images: torch.Tensor,
        prompt_embeds: torch.Tensor,
        timesteps: torch.Tensor,
        noise: torch.Tensor,
        negative_embeds: torch.Tensor | None = None,
        guidance_scale: torch.Tensor | None = None,
        pooled_embeds: torch.Tensor | None = None,
        negative_pooled: torch.Tensor | None = None,
        memory_slots: torch.Tensor | None = None,
        feedback: torch.Tensor | None = None,
        attention_visible: torch.Tensor | None = None,
        attention_write: torch.Tensor | None = None,
        control_images: torch.Tensor | None = None,
        control_scales: torch.Tensor | None = None,
        lora_columns: torch.Tensor | None = None,
        lora_scales: torch.Tensor | None = None,
        num_steps: int = 1,
        control_kinds: int = 0,
    ) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> stylized images (B, 3, H, W) float32 in [-1, 1].

        Pixels stay in the VAE's own range on both ends (the colour conversion folds the scaling in).
        timesteps: (B, S) integer, S >= num_steps, each row's schedule right-aligned and -1 before it;
        noise: (B, S, C, H/f, W/f), right-aligned the same way, the row's first noise in every column
        before its schedule. The last `num_steps` columns run. With `negative_embeds` and
        `guidance_scale` (B,) the batch runs classifier-free guidance, and rows whose scale is <= 1 keep
        their conditional prediction. SDXL takes `pooled_embeds` (and `negative_pooled` with guidance).
        With `memory_slots` and `feedback` (B,) each row starts from `z + feedback * (previous - z)`,
        its stream's previous clean latent read from its slot, and leaves its new one there
        (`pipeline.temporal`). With `attention_visible` (B, RING) and `attention_write` (B,) too, each
        row's self-attention also sees its own past frames at every UNet call
        (`pipeline.cached_attention`). With `lora_columns` (B, R) int64 and `lora_scales` (B, R) each row
        adds the LoRAs in the slots those columns name at those scales (`pipeline.lora_bank`). With
        `control_images` (kinds, B, 3, H, W), `control_scales` (B, kinds) and `control_kinds` (a bit per
        kind that runs) each UNet call adds the running ControlNets' residuals, times each row's scale
        (`pipeline.control`). The caller decides on the host, so nothing here waits for the device and
        the whole call can be captured in a CUDA graph.
        """
        self.check_inputs(images, prompt_embeds, timesteps, noise, negative_embeds, guidance_scale, num_steps)
        table = timesteps[:, -num_steps:].to(self.device)
        row_noise = noise[:, -num_steps:].to(self.device, torch.float32)
        guided = negative_embeds is not None and guidance_scale is not None
        embeds = torch.cat((prompt_embeds, negative_embeds)) if guided else prompt_embeds  # type: ignore[arg-type]
        added = None
        if pooled_embeds is not None:
            pooled = torch.cat((pooled_embeds, negative_pooled)) if guided else pooled_embeds  # type: ignore[arg-type]
            added = {"text_embeds": pooled.to(self.dtype), "time_ids": self.time_ids.expand(pooled.shape[0], -1)}

        # 1. Encode to latents (and blend in each remembering row's previous output).
        latents = self._encode(images.to(self.device, self.dtype))
        remembering = self.memory is not None and memory_slots is not None and feedback is not None
        if remembering:
            assert self.memory is not None and memory_slots is not None and feedback is not None
            latents = self.memory.blend(latents.float(), memory_slots, feedback.to(self.device))
        if self.attention is not None and attention_visible is not None and attention_write is not None:
            assert memory_slots is not None
            self.attention.rows = AttentionRows(memory_slots.to(self.device), attention_visible, attention_write)
        if self.loras is not None and lora_columns is not None and lora_scales is not None:
            twins = 2 if guided else 1  # guidance's unconditional rows wear the same LoRAs
            scales = lora_scales.to(self.device, self.dtype).repeat(twins, 1)
            self.loras.rows = LoraRows(lora_columns.to(self.device).repeat(twins, 1), scales)

        control = None
        if self.control is not None and control_images is not None and control_scales is not None and control_kinds:
            conditions = {k: control_images[k] for k in range(len(self.control.kinds)) if control_kinds >> k & 1}
            control = _RowControl(self.control, conditions, control_scales.to(self.device), guided)

        # 2. Noise the latents to each row's first timestep (the largest of its schedule).
        first = table.amax(dim=1)
        alpha = self.alphas_cumprod[first].view(-1, 1, 1, 1)
        x = alpha.sqrt() * latents.float() + (1.0 - alpha).sqrt() * row_noise[:, 0]

        # 3. The steps: one UNet call each; a row joins at its own first column and waits before it.
        try:
            x = self._steps(
                x, table, first, row_noise, embeds, added, guidance_scale if guided else None, num_steps, control
            )
        finally:
            if self.attention is not None:
                self.attention.rows = None
            if self.loras is not None:
                self.loras.rows = None
        if remembering:
            assert self.memory is not None and memory_slots is not None
            self.memory.remember(x, memory_slots)

        # 5. Decode back to pixels in [-1, 1].
        decoded = self.vae.decode(x.to(self.dtype) / self.scaling_factor, return_dict=False)[0]
        return decoded.float().clamp(-1.0, 1.0)

    def _steps(
        self,
        x: torch.Tensor,
        table: torch.Tensor,
        first: torch.Tensor,
        row_noise: torch.Tensor,
        embeds: torch.Tensor,
        added: dict[str, torch.Tensor] | None,
        guidance_scale: torch.Tensor | None,
        num_steps: int,
        control: _RowControl | None = None,
    ) -> torch.Tensor:
        """The batch's UNet calls and LCM steps: each row's clean latents after its last step."""
        for column in range(num_steps):
            t_column = table[:, column]
            running = t_column >= 0
            t = torch.where(running, t_column, first)
            model_output = self._predict(x, t, embeds, added, guidance_scale, control)
            alpha = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            x0 = self._x0(x, model_output, alpha)
            denoised = self.c_out[t].view(-1, 1, 1, 1) * x0 + self.c_skip[t].view(-1, 1, 1, 1) * x
            if column == num_steps - 1:
                x = denoised  # every row runs the last column
                break
            # 4. Before the next step, back up to its timestep with the row's next fixed noise.
            alpha_next = self.alphas_cumprod[table[:, column + 1].clamp(min=0)].view(-1, 1, 1, 1)
            renoised = alpha_next.sqrt() * denoised + (1.0 - alpha_next).sqrt() * row_noise[:, column + 1]
            x = torch.where(running.view(-1, 1, 1, 1), renoised, x)
        return x

    def _predict(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        embeds: torch.Tensor,
        added: dict[str, torch.Tensor] | None,
        guidance_scale: torch.Tensor | None,
        control: _RowControl | None = None,
    ) -> torch.Tensor:
        """One UNet call; with guidance every row gets an unconditional twin in the same batch."""
        model_input = x.to(self.dtype)
        if guidance_scale is not None:
            model_input, t = torch.cat((model_input, model_input)), torch.cat((t, t))
        hidden = embeds.to(self.dtype)
        residuals = {}
        if control is not None:
            down, mid = control.residuals(model_input, t, hidden, added)
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        output = self.unet(
            model_input, t, encoder_hidden_states=hidden, added_cond_kwargs=added, return_dict=False, **residuals
        )[0].float()
        if guidance_scale is None:
            return output
        cond, uncond = output.chunk(2)
        scale = torch.where(guidance_scale > 1.0, guidance_scale, 1.0).to(self.device).view(-1, 1, 1, 1)
        return uncond + scale * (cond - uncond)

    def _x0(self, x: torch.Tensor, model_output: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The clean latents from the model's prediction."""
        if self.prediction_type == "epsilon":
            return (x - (1.0 - alpha).sqrt() * model_output) / alpha.sqrt()
        if self.prediction_type == "v_prediction":
            return alpha.sqrt() * x - (1.0 - alpha).sqrt() * model_output
        if self.prediction_type == "sample":
            return model_output
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

    @staticmethod
    def check_inputs(
        images: torch.Tensor,
        prompt_embeds: torch.Tensor,
        timesteps: torch.Tensor,
        noise: torch.Tensor,
        negative_embeds: torch.Tensor | None,
        guidance_scale: torch.Tensor | None,
        num_steps: int,
    ) -> None:
        """Every per-row input has one row per image (shapes only: nothing waits for the device)."""
        if (negative_embeds is None) != (guidance_scale is None):
            raise ValueError("negative_embeds and guidance_scale go together: pass both for guidance or neither")
        if timesteps.ndim != 2 or noise.ndim != 5:
            raise ValueError(f"timesteps must be (B, S) and noise (B, S, C, h, w), got {timesteps.shape} {noise.shape}")
        if not MIN_STEPS <= num_steps <= min(timesteps.shape[1], noise.shape[1]):
            raise ValueError(f"num_steps {num_steps} outside [1, {timesteps.shape[1]}] columns of timesteps and noise")
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


class _RowControl:
    """A batch's control images and per-row scales, twinned for guidance like the UNet's rows."""

    def __init__(
        self, nets: ControlNets, conditions: dict[int, torch.Tensor], scales: torch.Tensor, guided: bool
    ) -> None:
        self.nets = nets
        twice = 2 if guided else 1
        self.conditions = {k: torch.cat([image] * twice) for k, image in conditions.items()}
        self.scales = torch.cat([scales] * twice)

    def residuals(
        self, sample: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, added: dict[str, torch.Tensor] | None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        return self.nets.residuals(sample, t, embeds, added, self.conditions, self.scales)


def right_aligned(timesteps: list[int], columns: int = MAX_STEPS) -> list[int]:
    """A row's schedule in `columns` columns, -1 before it (the layout the transform takes)."""
    return [-1] * (columns - len(timesteps)) + timesteps
