"""Class-name text embeddings: prompt templates, synonyms, and the inference cache."""
import warnings

import open_clip
import pytest
import torch
import torch.nn.functional as F

SINGLE = "A photo of a {} in the scene"


def direct_text(model, names, templates):
    """``[T, P, C]`` computed without the model's text encoder: tokenize, CLIP text tower, L2-normalise."""
    prompts = [t.format(n.split(", ")[0]) for n in names for t in templates]
    with torch.no_grad():
        emb = model.backbone.clip.encode_text(open_clip.tokenize(prompts))
    return F.normalize(emb, dim=-1).view(len(names), len(templates), -1)


class CountingEncoder:
    def __init__(self, text_encoder):
        self.inner = text_encoder.encode_tokens
        self.calls = 0
        text_encoder.encode_tokens = self

    def __call__(self, tokens):
        self.calls += 1
        return self.inner(tokens)


@pytest.fixture
def model(tiny_model):
    return tiny_model("b")


def test_training_recomputes_with_grad(model):
    counter = CountingEncoder(model.text_encoder)
    model.train()
    names = ["cat", "dog"]
    a = model.text_embeddings(names)
    b = model.text_embeddings(names)
    assert counter.calls == 2
    assert a.requires_grad and b.requires_grad and a.grad_fn is not None
    a.sum().backward()
    q = model.backbone.clip.transformer.resblocks[0].attn.q_proj_weight
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_inference_cache_keyed_by_class_list(model):
    counter = CountingEncoder(model.text_encoder)
    model.eval()
    first = model.text_embeddings(["cat", "dog"])
    assert counter.calls == 1 and not first.requires_grad
    again = model.text_embeddings(["cat", "dog"])
    assert counter.calls == 1 and torch.equal(again, first)
    other = model.text_embeddings(["dog", "cat", "bird"])
    assert counter.calls == 2 and other.shape[0] == 3
    torch.testing.assert_close(other, direct_text(model, ["dog", "cat", "bird"], [SINGLE]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(other[0], first[1], rtol=1e-5, atol=1e-6)  # "dog" in both vocabularies
    model.text_embeddings(["cat", "dog"])
    assert counter.calls == 2  # still cached


def test_inference_forward_uses_cache(model, random_images):
    counter = CountingEncoder(model.text_encoder)
    model.eval()
    batch = [{"image": im} for im in random_images([(64, 64)])]
    with torch.no_grad():
        model(batch, class_names=["cat", "dog"])
        model(batch, class_names=["cat", "dog"])
    assert counter.calls == 1
    with torch.no_grad():
        out = model(batch, class_names=["cat", "dog", "cow"])
    assert counter.calls == 2 and out[0]["sem_seg"].shape[0] == 3


def test_cached_embeddings_are_full_precision_under_autocast(model):
    """The first call of a vocabulary may come from a bf16 inference: what is cached (and
    served to later fp32 calls) is still the fp32 computation."""
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = model.text_embeddings(["cat", "dog"])
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, direct_text(model, ["cat", "dog"], [SINGLE]), rtol=1e-5, atol=1e-6)


def test_cache_invalidated_by_optimizer_step(model):
    names = ["cat", "dog"]
    model.eval()
    stale = model.text_embeddings(names).clone()
    counter = CountingEncoder(model.text_encoder)
    model.train()
    params = [p for p in model.backbone.clip.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.text_embeddings(names)[:, 0, 0].sum().backward()
    opt.step()
    model.eval()
    fresh = model.text_embeddings(names)
    assert counter.calls == 2  # one training call, one recompute after the step
    assert (fresh - stale).abs().max() > 1e-4
    torch.testing.assert_close(fresh, direct_text(model, names, [SINGLE]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("assign", [False, True])
def test_cache_invalidated_by_load_state_dict(model, tiny_model, assign):
    names = ["cat", "dog"]
    model.eval()
    stale = model.text_embeddings(names).clone()
    other = tiny_model("b", seed=1)
    model.load_state_dict(other.state_dict(), assign=assign)
    fresh = model.text_embeddings(names)
    assert (fresh - stale).abs().max() > 1e-4
    torch.testing.assert_close(fresh, direct_text(other, names, [SINGLE]), rtol=1e-5, atol=1e-6)


def test_cache_invalidated_by_in_place_edit(model):
    names = ["cat"]
    model.eval()
    stale = model.text_embeddings(names).clone()
    with torch.no_grad():
        model.backbone.clip.ln_final.weight.mul_(-1.0)  # a frozen parameter of the text tower
        model.backbone.clip.ln_final.bias.add_(0.5)
    fresh = model.text_embeddings(names)
    assert (fresh - stale).abs().max() > 1e-4
    torch.testing.assert_close(fresh, direct_text(model, names, [SINGLE]), rtol=1e-5, atol=1e-6)


def test_cache_sees_writes_through_state_dict_values(model):
    """EMA-style updates through ``state_dict()`` tensors (detached views sharing the
    parameter's version counter) invalidate the cache; ``clear_cache`` covers ``p.data`` writes."""
    names = ["cat"]
    model.eval()
    stale = model.text_embeddings(names).clone()
    state = model.state_dict()
    with torch.no_grad():
        state["backbone.clip.ln_final.weight"].mul_(-1.0)
    fresh = model.text_embeddings(names)
    assert (fresh - stale).abs().max() > 1e-4
    torch.testing.assert_close(fresh, direct_text(model, names, [SINGLE]), rtol=1e-5, atol=1e-6)
    model.backbone.clip.ln_final.bias.data.add_(0.5)  # no version counter of the parameter moves
    model.text_encoder.clear_cache()
    torch.testing.assert_close(model.text_embeddings(names), direct_text(model, names, [SINGLE]), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- templates, synonyms
def test_template_lists():
    from cat_seg.modeling.clip.prompts import PROMPT_TEMPLATES

    assert PROMPT_TEMPLATES["single"] == (SINGLE,)
    assert len(PROMPT_TEMPLATES["imagenet"]) == 80 and len(set(PROMPT_TEMPLATES["imagenet"])) == 80
    assert "a photo of a {}." in PROMPT_TEMPLATES["imagenet"]
    assert len(PROMPT_TEMPLATES["imagenet_select"]) == 8 and SINGLE in PROMPT_TEMPLATES["imagenet_select"]
    assert all(t.count("{}") == 1 for ts in PROMPT_TEMPLATES.values() for t in ts)


@pytest.mark.parametrize("ensemble,num_templates", [("single", 1), ("imagenet", 80), ("imagenet_select", 8)])
def test_templates_run_through_model(tiny_model, random_images, ensemble, num_templates):
    from cat_seg.modeling.clip.prompts import PROMPT_TEMPLATES

    model = tiny_model("b", train=True, MODEL__PROMPT_ENSEMBLE_TYPE=ensemble)
    agg = model.sem_seg_head.aggregator
    assert agg.cost_embed.in_channels == num_templates
    names = ["cat", "dog", "car"]
    text = model.text_embeddings(names)
    assert text.shape == (3, num_templates, model.backbone.embed_dim)
    torch.testing.assert_close(text.detach(), direct_text(model, names, PROMPT_TEMPLATES[ensemble]),
                               rtol=1e-5, atol=1e-6)
    batch = [{"image": im, "sem_seg": torch.zeros(64, 64, dtype=torch.long)} for im in random_images([(64, 64)])]
    loss = model(batch, class_names=names)["loss_sem_seg"]
    assert torch.isfinite(loss)
    loss.backward()
    assert agg.cost_embed.weight.grad.shape[1] == num_templates
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"]}], class_names=names)
    assert out[0]["sem_seg"].shape == (3, 64, 64)


def test_synonyms_use_first_name_only(model):
    model.eval()
    enc = model.text_encoder
    tokens = enc.tokenize(["building, edifice"], torch.device("cpu"))
    assert torch.equal(tokens, open_clip.tokenize(["A photo of a building in the scene"]))
    syn = model.text_embeddings(["building, edifice", "sky"])
    plain = model.text_embeddings(["building", "sky"])
    other = model.text_embeddings(["edifice", "sky"])
    torch.testing.assert_close(syn, plain, rtol=0, atol=0)
    assert (syn[0] - other[0]).abs().max() > 1e-4


def test_a_prompt_cut_at_the_context_length_is_warned_about(model):
    """open_clip cuts a prompt at the context length (77 tokens) silently: two long names that
    differ only after the cut would get the same embedding without a word."""
    encoder = model.text_encoder
    shared = "very " * 80
    long_names = [shared + "red car", shared + "blue car"]
    with pytest.warns(UserWarning, match=r"2 class name\(s\) fill CLIP's 77-token prompt and are cut to it, "
                                         r"e\.g\. 'very very"):
        tokens = encoder.tokenize(long_names + ["dog"])
    assert torch.equal(tokens[0], tokens[1])  # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.tokenize(["dog", "a fairly long but ordinary class name, with a synonym"])


def test_large_vocabularies_are_encoded_in_chunks(model, monkeypatch):
    """At inference the prompts go through the text tower ENCODE_CHUNK at a time (one pass of
    3,000 classes took 1.8 GB), with the embeddings of one pass."""
    from cat_seg.modeling.clip import text_encoder

    monkeypatch.setattr(text_encoder, "ENCODE_CHUNK", 4)
    counter = CountingEncoder(model.text_encoder)
    names = [f"class number {i}" for i in range(10)]
    model.eval()
    chunked = model.text_embeddings(names)
    assert counter.calls == 3  # 4 + 4 + 2 prompts
    torch.testing.assert_close(chunked, direct_text(model, names, [SINGLE]), rtol=1e-5, atol=1e-6)
