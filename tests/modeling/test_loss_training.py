"""Training loss (``docs/architecture.md``) and a few optimisation steps on a fixed batch."""
import pytest
import torch
import torch.nn.functional as F

from cat_seg.modeling.losses import sem_seg_bce_loss

IGNORE = 255
MEAN = torch.tensor([122.7709383, 116.7460125, 104.09373615]).view(-1, 1, 1)
STD = torch.tensor([68.5005327, 66.6321579, 70.3231630]).view(-1, 1, 1)


def hand_bce(logits, targets, ignore=IGNORE):
    """Explicit one-hot [B, H, W, T]: 1 at the GT class of valid pixels, all zeros at ignored ones."""
    b, t, h, w = logits.shape
    onehot = torch.zeros(b, h, w, t)
    for bi in range(b):
        for i in range(h):
            for j in range(w):
                label = int(targets[bi, i, j])
                if label != ignore:
                    onehot[bi, i, j, label] = 1.0
    return F.binary_cross_entropy_with_logits(logits.permute(0, 2, 3, 1), onehot)


def random_targets(shape, num_classes, ignore_fraction=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, num_classes, shape, generator=g)
    targets[torch.rand(shape, generator=g) < ignore_fraction] = IGNORE
    return targets


def test_loss_equals_hand_computed_bce():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 4, 6, 5, generator=g)
    targets = random_targets((2, 6, 5), 4)
    assert (targets == IGNORE).any() and (targets != IGNORE).any()
    loss = sem_seg_bce_loss(logits, targets, IGNORE)
    want = hand_bce(logits, targets)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-7)
    # discriminating: dropping the ignore pixels from the mean gives another value
    valid = (targets != IGNORE)
    dropped = F.binary_cross_entropy_with_logits(
        logits.permute(0, 2, 3, 1)[valid], F.one_hot(targets[valid], 4).float())
    assert abs(dropped.item() - want.item()) > 1e-3


def test_loss_gradient_matches_hand_computed():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, 4, 4, generator=g, requires_grad=True)
    targets = random_targets((1, 4, 4), 3, seed=1)
    (grad,) = torch.autograd.grad(sem_seg_bce_loss(logits, targets, IGNORE), logits)
    ref_logits = logits.detach().clone().requires_grad_(True)
    (want,) = torch.autograd.grad(hand_bce(ref_logits, targets), ref_logits)
    torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-7)


def test_all_ignored_pixels_are_negatives():
    logits = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(2))
    targets = torch.full((1, 2, 2), IGNORE)
    want = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    assert sem_seg_bce_loss(logits, targets, IGNORE).item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("bad", [4, 7, -1])
def test_out_of_range_labels_raise(bad):
    logits = torch.zeros(1, 4, 3, 3)
    targets = torch.zeros(1, 3, 3, dtype=torch.long)
    targets[0, 1, 1] = bad
    with pytest.raises(ValueError, match=r"\[0, 4\)") as info:
        sem_seg_bce_loss(logits, targets, IGNORE)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- through the model
@pytest.mark.parametrize("variant", ["b", "l"])
def test_model_loss_equals_hand_computed(tiny_model, random_images, class_jsons, variant):
    """Model loss on a batch with different image sizes: targets padded with ignore to /32,
    logits upsampled to the padded size, BCE over everything (hand-computed)."""
    model = tiny_model(variant, train=True)
    names = class_jsons[2]
    images = random_images([(64, 64), (50, 40)], seed=3)
    targets = [random_targets(im.shape[-2:], len(names), seed=4 + i) for i, im in enumerate(images)]
    batch = [{"image": im, "sem_seg": t} for im, t in zip(images, targets)]
    loss = model(batch)["loss_sem_seg"]  # default vocabulary: the train class json

    x = torch.zeros(2, 3, 64, 64)
    y = torch.full((2, 64, 64), IGNORE)
    for i, (im, t) in enumerate(zip(images, targets)):
        h, w = im.shape[-2:]
        x[i, :, :h, :w] = (im.float() - MEAN) / STD
        y[i, :h, :w] = t
    with torch.no_grad():
        clip_input = F.interpolate(x, size=model.backbone.resolution, mode="bilinear", align_corners=False)
        logits = model.sem_seg_head(model.backbone(clip_input), model.text_embeddings(names), pooling=(2, 2))
        logits = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False)
        want = hand_bce(logits, y)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_model_rejects_out_of_range_labels(tiny_model, random_images):
    model = tiny_model("b", train=True)
    target = torch.zeros(32, 32, dtype=torch.long)
    target[3, 3] = 9
    with pytest.raises(ValueError, match="target labels"):
        model([{"image": random_images([(32, 32)])[0], "sem_seg": target}], class_names=["a", "b", "c"])


def test_training_steps_reduce_loss(tiny_model, random_images):
    torch.manual_seed(0)
    model = tiny_model("b", train=True)
    names = ["sky", "grass", "car"]
    images = random_images([(64, 64), (64, 64)], seed=7)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, 32:] = 1
    labels[1, :, 40:] = 2
    labels[0, :4] = IGNORE
    batch = [{"image": im, "sem_seg": lab} for im, lab in zip(images, labels)]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-4)
    losses = []
    for _ in range(4):
        loss = model(batch, class_names=names)["loss_sem_seg"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = model(batch, class_names=names)["loss_sem_seg"].item()
    assert all(torch.isfinite(torch.tensor(losses)))
    trace = losses + [final]
    assert all(b < a for a, b in zip(trace, trace[1:])), trace
    assert final < losses[0] - 0.05, trace


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_resized_loss_equals_resize_then_bce_value_and_gradient(chunk):
    """Low-resolution logits: the loss resizes them to the targets' size itself (a chunk of
    classes at a time, recomputed in the backward). Same value and gradient as resizing the
    whole tensor first and taking the one-hot BCE."""
    g = torch.Generator().manual_seed(3)
    logits = (3 * torch.randn(2, 7, 4, 5, generator=g)).requires_grad_()
    targets = random_targets((2, 12, 15), 7, seed=4)
    loss = sem_seg_bce_loss(logits, targets, IGNORE, chunk=chunk)
    (grad,) = torch.autograd.grad(loss, logits)
    reference = logits.detach().clone().requires_grad_()
    resized = F.interpolate(reference, size=(12, 15), mode="bilinear", align_corners=False)
    want = hand_bce(resized, targets)
    (want_grad,) = torch.autograd.grad(want, reference)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-8)


def test_resized_loss_never_holds_all_target_size_maps(largest_allocation):
    """With 40 classes and chunks of 8, no tensor of the forward or backward has more than
    8 target-size class maps."""
    logits = torch.randn(2, 40, 8, 8).requires_grad_()
    targets = random_targets((2, 32, 32), 40)
    with largest_allocation() as watch:
        sem_seg_bce_loss(logits, targets, IGNORE, chunk=8).backward()
    assert watch.largest <= 2 * 8 * 32 * 32


def test_spatial_block_keeps_no_mlp_activation_for_the_backward():
    """In training a spatial block keeps, for its MLP branch, only the branch's input (the
    residual, kept anyway): no norm output, no fc1 or GELU output (hidden width 4 x dim) is
    saved; the gradients are those of the branch computed without recomputation."""
    from cat_seg.modeling.spatial_aggregation import SwinBlock

    torch.manual_seed(0)
    dim = 16
    block = SwinBlock(dim, guidance_dim=8, num_heads=2, window=4, shift=0)
    x = torch.randn(1, 3, 8, 8, dim, requires_grad=True)
    guidance = torch.randn(1, 8, 8, 8)
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.data_ptr()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = block(x, guidance)
    params = {p.data_ptr() for p in block.parameters()}
    activations = [shape for shape, ptr in saved if ptr not in params]
    hidden = [shape for shape in activations if len(shape) > 1 and shape[-1] == 4 * dim]
    assert activations and not hidden, hidden
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, [x] + list(block.mlp.parameters()), grad)
    # the same block with the MLP branch computed plainly
    branch_input = {}
    hook = block.norm2.register_forward_hook(lambda m, args, output: branch_input.setdefault("x", args[0]))
    try:
        block(x, guidance)
    finally:
        hook.remove()
    residual = branch_input["x"]
    plain = residual + block.mlp(block.norm2(residual))
    want = torch.autograd.grad(plain, [x] + list(block.mlp.parameters()), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
