"""Tiny diffusers pipelines built from small random configs, as diffusers' own tests build them (no download):
for the safety-checker tests and ``bench/safety_checker.py``. Needs the ``diffusers`` extra."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["TEXT_DIM", "generate", "stock_safety_checker", "tiny_pipeline"]

TEXT_DIM = 32
"""Width of the tiny text encoder's embeddings (the pipeline is driven with ``prompt_embeds``: no tokenizer)."""


def tiny_pipeline(safety_checker: Any = None, *, sample_size: int = 32) -> Any:
    """A StableDiffusionPipeline with random weights that makes ``2 * sample_size`` px images in a second."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(  # type: ignore[no-untyped-call]
        block_out_channels=(4, 8), layers_per_block=1, sample_size=sample_size, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM, norm_num_groups=2,
    )
    scheduler = DDIMScheduler(  # type: ignore[no-untyped-call]
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )
    vae = AutoencoderKL(  # type: ignore[no-untyped-call]
        block_out_channels=[4, 8], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=2,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=TEXT_DIM,
                                                intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                                                pad_token_id=1, vocab_size=1000))
    return StableDiffusionPipeline(  # type: ignore[no-untyped-call]
        vae=vae, text_encoder=text_encoder, tokenizer=None, unet=unet, scheduler=scheduler,
        safety_checker=safety_checker, feature_extractor=CLIPImageProcessor(),
        requires_safety_checker=False,
    )


def generate(pipe: Any, images: int = 2, *, steps: int = 2, seed: int = 0, output_type: str = "pil") -> Any:
    """Run the pipeline on a fixed random prompt embedding (the same images for the same seed)."""
    generator = torch.Generator().manual_seed(seed)
    prompt_embeds = torch.randn(1, 8, TEXT_DIM, generator=torch.Generator().manual_seed(seed))
    return pipe(prompt_embeds=prompt_embeds, num_images_per_prompt=images, num_inference_steps=steps,
                guidance_scale=1.0, generator=generator, output_type=output_type)


def stock_safety_checker(*, full_size: bool = False) -> Any:
    """diffusers' stock ``StableDiffusionSafetyChecker`` with random weights. ``full_size``: the architecture of
    the real one (CLIP ViT-L/14 at 224 px: what it costs); otherwise a tiny one (its call contract only)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    if full_size:
        vision = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                  "num_attention_heads": 16, "patch_size": 14, "image_size": 224}
        config = CLIPConfig(vision_config=vision, projection_dim=768)
    else:
        vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "patch_size": 4, "image_size": 32}
        config = CLIPConfig(vision_config=vision, text_config={"hidden_size": 32, "intermediate_size": 37,
                                                               "num_hidden_layers": 2, "num_attention_heads": 4},
                            projection_dim=32)
    torch.manual_seed(0)
    return StableDiffusionSafetyChecker(config).eval()  # type: ignore[no-untyped-call]
