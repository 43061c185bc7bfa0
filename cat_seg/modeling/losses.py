"""Training loss of CAT-Seg (``docs/architecture.md``, "Training loss")."""
import torch
import torch.nn.functional as F

# Classes whose target-size maps are computed at once (forward and backward): 16 classes of a
# batch of 4 at 384x384 are 38 MB in fp32, against 400 MB for all 171 COCO-Stuff classes.
LOSS_CLASS_CHUNK = 16


def _resize(logits: torch.Tensor, size) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits.float()
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)


def _chunk_targets(labels, valid, start, count):
    """``(inside [B, H, W], index [B, 1, H, W])``: the pixels whose class is one of the chunk's
    ``count`` classes from ``start``, and their class's position in the chunk (0 elsewhere)."""
    inside = valid & (labels >= start) & (labels < start + count)
    return inside, (labels - start).clamp(0, count - 1).unsqueeze(1)


class _ResizedBCE(torch.autograd.Function):
    """Sum over classes and pixels of ``softplus(x) - onehot * x`` for ``x`` the logits resized
    to the targets' size, one chunk of classes at a time; the backward recomputes each chunk's
    resize (the resized logits are never stored whole)."""

    @staticmethod
    def forward(ctx, logits, labels, valid, chunk):
        size = labels.shape[-2:]
        total = logits.new_zeros((), dtype=torch.float32)
        for start in range(0, logits.shape[1], chunk):
            resized = _resize(logits[:, start:start + chunk], size)  # [B, c, H, W]
            total += F.softplus(resized).sum()
            inside, index = _chunk_targets(labels, valid, start, resized.shape[1])
            total -= (resized.gather(1, index).squeeze(1) * inside).sum()
        ctx.save_for_backward(logits, labels, valid)
        ctx.chunk = chunk
        return total

    @staticmethod
    def backward(ctx, grad_total):
        logits, labels, valid = ctx.saved_tensors
        size = labels.shape[-2:]
        grads = []
        for start in range(0, logits.shape[1], ctx.chunk):
            piece = logits[:, start:start + ctx.chunk].detach().requires_grad_()
            with torch.enable_grad():
                resized = _resize(piece, size)
            grad = resized.detach().sigmoid()  # d softplus(x) / dx
            inside, index = _chunk_targets(labels, valid, start, resized.shape[1])
            grad.scatter_add_(1, index, -inside.unsqueeze(1).to(grad.dtype))  # - onehot
            grads.append(torch.autograd.grad(resized, piece, grad.mul_(grad_total))[0])
        return torch.cat(grads, dim=1), None, None, None


def sem_seg_bce_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_value: int = 255,
                     chunk: int = LOSS_CLASS_CHUNK) -> torch.Tensor:
    """Per-class binary cross-entropy against one-hot targets, mean over all elements, of the
    logits resized (bilinear, align_corners=False, in fp32) to the targets' size.

    Equals ``binary_cross_entropy_with_logits(resize(logits), onehot)`` where
    ``onehot[b, t, i, j]`` is 1 at the ground-truth class of non-ignored pixels and **0
    everywhere at ignored pixels** (they count as negatives for every class; the mean runs
    over all B*T*H*W elements), computed without materialising the one-hot tensor:
    ``mean(softplus(x)) - sum_{valid} x[gt] / N``. The resized logits are computed
    ``chunk`` classes at a time and recomputed in the backward pass, so the training step
    never holds the ``[B, T, H, W]`` target-size maps (400 MB at 384x384 with 171 classes,
    plus as much again for their gradient).

    Args:
        logits: ``[B, T, h, w]`` (any float dtype; ``h, w`` the model's output size).
        targets: ``[B, H, W]`` integer labels in ``[0, T)`` or ``ignore_value``.
    """
    if logits.shape[0] != targets.shape[0] or logits.dim() != 4 or targets.dim() != 3:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not match")
    valid = targets != ignore_value
    num_classes = logits.shape[1]
    if valid.any() and (targets[valid].min() < 0 or targets[valid].max() >= num_classes):
        raise ValueError(
            f"target labels must be in [0, {num_classes}) or {ignore_value} (ignore); "
            f"got values in [{int(targets[valid].min())}, {int(targets[valid].max())}]"
        )
    labels = torch.where(valid, targets, 0).long()
    total = _ResizedBCE.apply(logits, labels, valid, max(1, int(chunk)))
    return total / (targets.shape[0] * num_classes * targets.shape[1] * targets.shape[2])
