"""Training loss of CAT-Seg (``docs/architecture.md``, "Training loss")."""
import torch
import torch.nn.functional as F


def sem_seg_bce_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_value: int = 255) -> torch.Tensor:
    """Per-class binary cross-entropy against one-hot targets, mean over all elements.

    Equals ``binary_cross_entropy_with_logits(logits, onehot)`` where ``onehot[b, t, i, j]``
    is 1 at the ground-truth class of non-ignored pixels and **0 everywhere at ignored
    pixels** (they count as negatives for every class; the mean runs over all B*T*H*W
    elements), computed without materialising the one-hot tensor:
    ``mean(softplus(x)) - sum_{valid} x[gt] / N``.

    Args:
        logits: ``[B, T, H, W]``.
        targets: ``[B, H, W]`` integer labels in ``[0, T)`` or ``ignore_value``.
    """
    if logits.shape[0] != targets.shape[0] or logits.shape[-2:] != targets.shape[-2:]:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not match")
    logits = logits.float()
    valid = targets != ignore_value
    num_classes = logits.shape[1]
    if valid.any() and (targets[valid].min() < 0 or targets[valid].max() >= num_classes):
        raise ValueError(
            f"target labels must be in [0, {num_classes}) or {ignore_value} (ignore); "
            f"got values in [{int(targets[valid].min())}, {int(targets[valid].max())}]"
        )
    positive = logits.gather(1, torch.where(valid, targets, 0).long().unsqueeze(1)).squeeze(1)
    return (F.softplus(logits).sum() - positive[valid].sum()) / logits.numel()
