from .clip_vit import CLIPVisionBackbone, default_guidance_blocks, interpolate_positional_embedding

__all__ = ["CLIPVisionBackbone", "default_guidance_blocks", "interpolate_positional_embedding"]
