"""Every speed option keeps the exact-mode outputs (fp32, every option off) within 1e-4.

Tiny CPU configs; vocabularies below and above PAD_LEN (32) so that both the padding and the
top-k pruning paths run. Chunked and unchunked inference agree within 1e-5.
"""
import pytest
import torch

from cat_seg.modeling.fast import FastOptions, set_fast_options

OPTIONS = ["window_attention_4d", "token_layout", "padding_closed_form", "fused_upconv", "skip_pruned_classes",
           "truncate_text"]
TOL = 1e-4


def names(n):
    return [f"thing {i}" for i in range(n)]


@pytest.fixture(scope="module")
def sliding_model(tiny_model, perturb_zero_init):
    model = tiny_model("b", TEST__SLIDING_WINDOW=True, MODEL__SEM_SEG_HEAD__TEST_POOLING_SIZES=[1, 1])
    return perturb_zero_init(model).eval()


def infer(model, image, vocabulary, options, **overrides):
    set_fast_options(model, options)
    set_fast_options(model, **overrides)
    with torch.no_grad():
        return model([{"image": image, "height": 150, "width": 200}], class_names=vocabulary)[0]["sem_seg"]


def logits(model, images, vocabulary, options, pooling=(1, 1), **overrides):
    set_fast_options(model, options)
    set_fast_options(model, **overrides)
    with torch.no_grad():
        return model.predict_logits(images, vocabulary, pooling)


@pytest.mark.parametrize("num_classes", [20, 50])
def test_each_option_matches_exact_mode(sliding_model, random_images, num_classes):
    image = random_images([(170, 230)], seed=3)[0]
    vocabulary = names(num_classes)
    exact = FastOptions.exact()
    reference = infer(sliding_model, image, vocabulary, exact)
    assert reference.shape == (num_classes, 150, 200)
    for option in OPTIONS:
        out = infer(sliding_model, image, vocabulary, exact, **{option: True})
        assert (out - reference).abs().max() <= TOL, option
    out = infer(sliding_model, image, vocabulary, FastOptions())  # every default option on
    assert (out - reference).abs().max() <= TOL


@pytest.mark.parametrize("num_classes", [20, 50])
def test_logits_match_exact_mode(sliding_model, num_classes):
    """Logits (more sensitive than probabilities), also with class-aggregation pooling."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 128, 128, generator=g)
    vocabulary = names(num_classes)
    for pooling in [(1, 1), (2, 2)]:
        reference = logits(sliding_model, images, vocabulary, FastOptions.exact(), pooling)
        for option in [o for o in OPTIONS if o != "skip_pruned_classes"]:
            out = logits(sliding_model, images, vocabulary, FastOptions.exact(), pooling, **{option: True})
            assert (out - reference).abs().max() <= TOL, (option, pooling)
        out = logits(sliding_model, images, vocabulary, FastOptions(class_chunk_size=0), pooling)
        assert (out - reference).abs().max() <= TOL, pooling


@pytest.mark.parametrize("num_classes", [20, 50])
def test_chunked_equals_unchunked(sliding_model, random_images, num_classes):
    image = random_images([(170, 230)], seed=4)[0]
    vocabulary = names(num_classes)
    for base in (FastOptions.exact(), FastOptions()):
        whole = infer(sliding_model, image, vocabulary, base, class_chunk_size=0)
        for chunk in (1, 7, 32):
            out = infer(sliding_model, image, vocabulary, base, class_chunk_size=chunk)
            assert (out - whole).abs().max() <= 1e-5, (base, chunk)


def test_vit_l_like_and_full_attention(tiny_model, perturb_zero_init):
    """Patch-14 tiny model, and the softmax class attention with closed-form padding."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 112, 112, generator=g)
    for kwargs in ({}, {"MODEL__SEM_SEG_HEAD__ATTENTION_TYPE": "full"}):
        model = perturb_zero_init(tiny_model("l", **kwargs)).eval()
        for vocabulary in (names(12), names(40)):
            reference = logits(model, images, vocabulary, FastOptions.exact())
            out = logits(model, images, vocabulary, FastOptions(class_chunk_size=5))
            assert (out - reference).abs().max() <= TOL, kwargs


def test_truncated_text_tower(tiny_model):
    model = tiny_model("l")
    vocabulary = ["sky", "a very long class name with many many words in it", "building, edifice", "x"]
    tokens = model.backbone.text_encoder.tokenize(vocabulary, torch.device("cpu"))
    with torch.no_grad():
        set_fast_options(model, truncate_text=False)
        full = model.backbone.encode_text(tokens)
        set_fast_options(model, truncate_text=True)
        truncated = model.backbone.encode_text(tokens)
    assert (truncated - full).abs().max() <= 1e-5


def test_non_sliding_inference(tiny_model, random_images, perturb_zero_init):
    model = perturb_zero_init(tiny_model("b")).eval()
    batch = [{"image": im} for im in random_images([(128, 160), (96, 128)], seed=5)]
    outs = []
    for options in (FastOptions.exact(), FastOptions(class_chunk_size=3)):
        set_fast_options(model, options)
        with torch.no_grad():
            outs.append([r["sem_seg"] for r in model(batch, class_names=names(10))])
    for ref, out in zip(*outs):
        assert (out - ref).abs().max() <= TOL


def _loss_and_grads(model, batch, vocabulary, options):
    set_fast_options(model, options)
    model.zero_grad(set_to_none=True)
    loss = model(batch, class_names=vocabulary)["loss_sem_seg"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_training_options_keep_loss_and_gradients(tiny_model, random_images, perturb_zero_init):
    model = perturb_zero_init(tiny_model("b", train=True))
    g = torch.Generator().manual_seed(0)
    vocabulary = names(12)
    batch = [{"image": im, "sem_seg": torch.randint(0, 12, (128, 128), generator=g)}
             for im in random_images([(128, 128), (128, 128)], seed=6)]
    batch[0]["sem_seg"][:10] = 255
    ref_loss, ref_grads = _loss_and_grads(model, batch, vocabulary, FastOptions.exact())
    for options in (FastOptions(), FastOptions(checkpoint_activations=True, class_chunk_size=5)):
        loss, grads = _loss_and_grads(model, batch, vocabulary, options)
        assert abs(loss - ref_loss) <= 1e-6, options
        assert grads.keys() == ref_grads.keys()
        for name, grad in grads.items():
            scale = ref_grads[name].abs().max().clamp_min(1e-3)
            assert (grad - ref_grads[name]).abs().max() / scale <= 1e-4, (options, name)


@pytest.mark.parametrize("num_classes", [20, 50])
def test_bf16_autocast_is_safe(sliding_model, random_images, num_classes):
    """bf16 autocast runs through padding, pruning (scatter of -100) and the merge; fp32 probabilities out."""
    image = random_images([(170, 230)], seed=7)[0]
    vocabulary = names(num_classes)
    exact = infer(sliding_model, image, vocabulary, FastOptions.exact())
    sliding_model.inference_autocast = torch.bfloat16
    try:
        fast = infer(sliding_model, image, vocabulary, FastOptions())
    finally:
        sliding_model.inference_autocast = None
    assert fast.dtype == torch.float32 and torch.isfinite(fast).all()
    assert fast.min() >= 0 and fast.max() <= 1
    if num_classes <= 32:  # PAD_LEN: no top-k pruning, whose near-ties bf16 may legitimately flip
        assert (fast - exact).abs().max() < 0.05  # bf16 rounding only (random weights, unsaturated)


def test_autocast_clip_off_keeps_clip_in_fp32(tiny_model, random_images):
    """MODEL.FAST.AUTOCAST_CLIP False: under bf16 autocast the CLIP image tower returns fp32
    features (the aggregator still runs in bf16); True: bf16 features."""
    image = random_images([(128, 128)], seed=9)[0]
    dtypes = {}
    for autocast_clip in (True, False):
        model = tiny_model("b", MODEL__FAST__AUTOCAST_CLIP=autocast_clip)
        assert model.autocast_clip is autocast_clip
        model.inference_autocast = torch.bfloat16
        seen = []
        handle = model.backbone.register_forward_hook(lambda m, i, out: seen.append(out["dense_embeddings"].dtype))
        with torch.no_grad():
            probs = model([{"image": image}], class_names=names(5))[0]["sem_seg"]
        handle.remove()
        assert probs.dtype == torch.float32 and torch.isfinite(probs).all()
        dtypes[autocast_clip] = seen[0]
    assert dtypes == {True: torch.bfloat16, False: torch.float32}


def test_bf16_training_step_runs(tiny_model, random_images):
    model = tiny_model("b", train=True)
    set_fast_options(model, FastOptions(checkpoint_activations=True))
    g = torch.Generator().manual_seed(0)
    batch = [{"image": im, "sem_seg": torch.randint(0, 40, (128, 128), generator=g)}
             for im in random_images([(128, 128)], seed=8)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(batch, class_names=names(40))["loss_sem_seg"]  # 40 > PAD_LEN: pruning in training
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _aggregator(**kwargs):
    from cat_seg.modeling.aggregator import Aggregator

    torch.manual_seed(0)
    return Aggregator(text_dim=16, appearance_dim=16, hidden_dim=32, text_guidance_proj_dim=8,
                      appearance_guidance_proj_dim=8, decoder_dims=(16, 16), decoder_guidance_dims=(8, 8),
                      decoder_guidance_proj_dims=(4, 4), num_layers=1, num_heads=2, window=4, pad_len=0,
                      **kwargs).eval()


def test_fp32_cost_embedding_separates_scores_closer_than_bf16_spacing():
    """Two classes whose cosine scores differ by 2e-4 (bf16 spacing between 0.25 and 0.5 is
    2^-9 ~ 2e-3): with MODEL.FAST.FP32_COST_EMBEDDING their embedded cost maps differ under
    bf16 autocast and stay fp32; without it bf16 rounds both score maps to the same values."""
    cost = torch.full((1, 1, 2, 8, 8), 0.25)
    cost[:, :, 1] += 2e-4
    embedded = {}
    for fp32, training in ((True, False), (False, False), (True, True)):
        aggregator = _aggregator(fp32_cost_embedding=fp32).train(training)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            embedded[fp32, training] = aggregator.embed_cost(cost)
    assert embedded[True, True].dtype == torch.bfloat16  # training (SOLVER.AMP) follows autocast
    embedded = {fp32: out for (fp32, training), out in embedded.items() if not training}
    assert embedded[True].dtype == torch.float32 and embedded[False].dtype == torch.bfloat16
    assert not torch.equal(embedded[True][:, :, 0], embedded[True][:, :, 1])
    assert torch.equal(embedded[False][:, :, 0], embedded[False][:, :, 1])


def test_fp32_last_decoder_block_runs_in_fp32_under_autocast():
    """MODEL.FAST.FP32_LAST_DECODER_BLOCK: at inference the first up-block follows autocast
    (bf16 output), the last one computes in fp32; in training both follow autocast; the
    logits are fp32 either way."""
    for fp32, training in ((True, False), (False, False), (True, True)):
        decoder = _aggregator(fp32_last_decoder_block=fp32).decoder.train(training)
        seen = []
        hooks = [block.register_forward_hook(lambda m, i, out: seen.append(out.dtype)) for block in decoder.blocks]
        cost = torch.randn(1, 32, 3, 4, 4)
        guidance = [torch.randn(1, 4, 8, 8), torch.randn(1, 4, 16, 16)]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = decoder(cost, guidance)
        for hook in hooks:
            hook.remove()
        assert logits.shape == (1, 3, 16, 16) and logits.dtype == torch.float32
        assert seen == [torch.bfloat16, torch.float32 if fp32 and not training else torch.bfloat16]


def test_precision_options_do_not_change_fp32_outputs():
    """Without autocast the fp32 options are no-ops: outputs are bit-identical."""
    g = torch.Generator().manual_seed(1)
    image = torch.randn(2, 16, 4, 4, generator=g)
    text = torch.randn(5, 1, 16, generator=g)
    guidance = [torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 8, 16, 16, generator=g)]
    outputs = []
    for fp32 in (True, False):
        aggregator = _aggregator(fp32_cost_embedding=fp32, fp32_last_decoder_block=fp32)
        with torch.no_grad():
            outputs.append(aggregator(image, text, image, guidance))
    assert outputs[0].shape == (2, 5, 16, 16)
    assert torch.equal(outputs[0], outputs[1])


def test_precision_config_keys_reach_the_modules(tiny_model):
    for value in (True, False):
        model = tiny_model("b", MODEL__FAST__FP32_COST_EMBEDDING=value, MODEL__FAST__FP32_LAST_DECODER_BLOCK=not value)
        aggregator = model.sem_seg_head.aggregator
        assert aggregator.fp32_cost_embedding is value and aggregator.decoder.fp32_last_block is (not value)
