"""Cosine cost volume between dense image embeddings and class text embeddings, and the
top-k class selection of large vocabularies (``docs/architecture.md``, "Cost volume").

The volume is returned as ``[B, P, T, H, W]`` (the official axis order) but stored as
``[B, T, P, H, W]``: the cost embedding reads it as ``[B*T, P, H, W]`` without a copy."""
from typing import Tuple

import torch
import torch.nn.functional as F

# Logit given to the classes dropped by the top-k pruning of large vocabularies.
PRUNED_CLASS_LOGIT = -100.0


def expand_text(text_embeddings: torch.Tensor, batch: int) -> torch.Tensor:
    """``[T, P, C]`` (shared vocabulary) or ``[B, T, P, C]`` -> ``[B, T, P, C]`` (a view)."""
    if text_embeddings.dim() == 3:
        return text_embeddings.unsqueeze(0).expand(batch, -1, -1, -1)
    if text_embeddings.dim() != 4 or text_embeddings.shape[0] != batch:
        raise ValueError(
            f"text embeddings must be [T, P, C] or [B={batch}, T, P, C], got {tuple(text_embeddings.shape)}"
        )
    return text_embeddings


def cosine_cost_volume(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pixel embedding with every class/template embedding.

    Args:
        image_embeddings: ``[B, C, H, W]``.
        text_embeddings: ``[B, T, P, C]`` or ``[T, P, C]``.
    Returns:
        cost volume ``[B, P, T, H, W]`` with
        ``cost[b, p, t, i, j] = <img[b, :, i, j] / |.|, text[b, t, p] / |.|>`` (eps 1e-12),
        a view of ``[B, T, P, H, W]`` storage.
    """
    if image_embeddings.dim() != 4 or text_embeddings.dim() not in (3, 4) \
            or text_embeddings.shape[-1] != image_embeddings.shape[1] \
            or (text_embeddings.dim() == 4 and text_embeddings.shape[0] != image_embeddings.shape[0]):
        raise ValueError(f"cost volume of image embeddings {tuple(image_embeddings.shape)} and text embeddings "
                         f"{tuple(text_embeddings.shape)}: expected [B, C, H, W] and [T, P, C] or [B, T, P, C] "
                         "(the same C and B)")
    image = F.normalize(image_embeddings, dim=1)
    text = F.normalize(text_embeddings, dim=-1)
    if text.dim() == 3:
        return torch.einsum("bchw,tpc->btphw", image, text).transpose(1, 2)
    return torch.einsum("bchw,btpc->btphw", image, text).transpose(1, 2)


def select_top_classes(
    cost_volume: torch.Tensor, text_embeddings: torch.Tensor, k: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep, per image, the ``k`` classes with the highest maximum cosine score.

    Args:
        cost_volume: ``[B, P, T, H, W]`` with ``T > k``.
        text_embeddings: ``[B, T, P, C]`` or ``[T, P, C]`` (any normalisation).
        k: number of classes kept.
    Returns:
        ``(cost_volume [B, P, k, H, W] (a view of ``[B, k, P, H, W]`` storage), text
        [B, k, P, C] (L2-normalised), indices [B, k])``.
        The kept classes are in descending score order; the order does not matter downstream
        (class aggregation is permutation-equivariant and results are scattered back).
    """
    batch = cost_volume.shape[0]
    scores = cost_volume.amax(dim=(1, 3, 4))  # [B, T]
    indices = scores.topk(k, dim=1).indices
    text = F.normalize(expand_text(text_embeddings, batch), dim=-1)
    gather_index = indices[:, :, None, None].expand(-1, -1, text.shape[2], text.shape[3])
    text = torch.gather(text, 1, gather_index)
    by_class = cost_volume.transpose(1, 2)  # [B, T, P, H, W]
    cost_index = indices[:, :, None, None, None].expand(-1, -1, *by_class.shape[2:])
    return torch.gather(by_class, 1, cost_index).transpose(1, 2), text, indices


def scatter_class_logits(logits: torch.Tensor, indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Put the logits ``[B, k, H, W]`` of the kept classes back into ``[B, T, H, W]``.

    Classes that were not kept get :data:`PRUNED_CLASS_LOGIT` (-100) everywhere.
    """
    batch, _, height, width = logits.shape
    out = logits.new_full((batch, num_classes, height, width), PRUNED_CLASS_LOGIT)
    return out.scatter(1, indices[:, :, None, None].expand(-1, -1, height, width), logits)
