"""Class-name embeddings: prompts -> tokens -> CLIP text tower, with an inference cache."""
import warnings
from collections import OrderedDict
from typing import Hashable, List, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from ..precision import full_precision
from .prompts import build_prompts, get_templates

# Prompts encoded at once at inference: a 3,000-class vocabulary in one pass took 1.8 GB
# (ViT-B text tower, about 0.6 MB per prompt); 256 at a time hold about 150 MB.
ENCODE_CHUNK = 256


class TextEncoder(nn.Module):
    """Embeds a vocabulary of class names with the CLIP text tower (``docs/architecture.md``, "Text encoder").

    The CLIP model (an ``open_clip.CLIP``, both towers) is *referenced*, not registered as a
    submodule: its parameters are owned, saved and loaded under ``backbone.clip.*`` (the
    layout of official and our checkpoints), and this module has no state of its own. The
    text tower is fine-tuned together with the image tower.

    In training mode with gradients enabled, embeddings are recomputed on every call, with
    gradients. Otherwise results are cached, keyed by the class list, templates, device,
    dtype and the address and version counter of every text-tower parameter, so a changed
    vocabulary, an optimizer step, a weight load or an in-place update of a parameter (also
    through ``state_dict()`` values or ``detach()``, which share its counter) never returns
    stale embeddings. One kind of write cannot be seen: through ``p.data`` (e.g. an EMA
    written as ``p.data.copy_(...)``), whose tensor has a version counter of its own; call
    :meth:`clear_cache` after such writes. The cached tensor itself is returned: treat it as
    read-only. Cached embeddings are computed in fp32 whatever autocast context the first
    call came from (precision policy, :mod:`..precision`).

    Args:
        clip_model: the CLIP model whose text tower is used.
        prompt_ensemble_type: ``single`` | ``imagenet`` | ``imagenet_select``.
        cache_size: vocabularies kept in the cache.
    """

    def __init__(self, clip_model: nn.Module, prompt_ensemble_type: str = "single", cache_size: int = 8):
        super().__init__()
        self.__dict__["clip"] = clip_model  # a reference: not a submodule (see the class docstring)
        self.templates = get_templates(prompt_ensemble_type)
        self.context_length = clip_model.context_length
        self.cache_size = cache_size
        self._cache: "OrderedDict[Hashable, torch.Tensor]" = OrderedDict()

    @property
    def num_templates(self) -> int:
        return len(self.templates)

    @property
    def device(self) -> torch.device:
        return self.clip.token_embedding.weight.device

    def text_parameters(self) -> List[nn.Parameter]:
        """Parameters of the text tower (everything of CLIP outside ``visual``)."""
        return [p for name, p in self.clip.named_parameters() if not name.startswith("visual.")]

    def tokenize(self, class_names: Sequence[str], device=None) -> torch.Tensor:
        """``[T*P, context]`` token ids in class-major order. A prompt longer than the context
        is cut to it (as CLIP does) with a warning naming its class: two names that differ
        only past the cut get the same embedding."""
        prompts = build_prompts(class_names, self.templates)
        tokens = open_clip.tokenize(prompts, context_length=self.context_length)
        cut = (tokens[:, -1] != 0).view(len(class_names), -1).any(dim=1)  # the last slot is used: cut
        if cut.any():
            names = [name for name, long in zip(class_names, cut.tolist()) if long]
            warnings.warn(f"{len(names)} class name(s) fill CLIP's {self.context_length}-token prompt and are cut "
                          f"to it, e.g. {names[0][:60]!r}; names that differ only after the cut get the same "
                          "embedding", stacklevel=2)
        return tokens.to(device or self.device)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[N, context]`` token ids -> ``[N, C]`` text embeddings (not normalised).

        The sequences are cut after the last end-of-text token of the batch: with the causal
        mask, positions up to a prompt's end-of-text token never attend to later ones, so the
        pooled features are the same for a fraction of the 77-token cost (prompts are ~10-20
        tokens). Models that pool otherwise run open_clip's ``encode_text`` unchanged.
        """
        clip = self.clip
        mask = getattr(clip, "attn_mask", None)
        if getattr(clip, "text_pool_type", "argmax") != "argmax" or not isinstance(mask, torch.Tensor):
            return clip.encode_text(tokens)
        eot = tokens.argmax(dim=-1)  # the end-of-text token has the largest id
        length = int(eot.max()) + 1
        cast_dtype = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens[:, :length]).to(cast_dtype)
        x = x + clip.positional_embedding[:length].to(cast_dtype)
        x = clip.transformer(x, attn_mask=mask[:length, :length])
        x = clip.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        if clip.text_projection is None:
            return x
        return clip.text_projection(x) if isinstance(clip.text_projection, nn.Linear) else x @ clip.text_projection

    def _weights_version(self) -> Tuple[Tuple[int, int], ...]:
        """Address and version counter of every text-tower tensor: any in-place update
        (optimizer step, ``load_state_dict``) bumps a counter, and a replaced tensor
        (``load_state_dict(assign=True)``, ``p.data = ...``) changes the address. Writes
        through ``p.data`` bump no counter of ``p`` (see the class docstring)."""
        return tuple((p.data_ptr(), p._version) for p in self.text_parameters())

    def forward(self, class_names: Sequence[str]) -> torch.Tensor:
        """L2-normalised embeddings ``[T, P, C]`` of ``class_names`` (P = number of templates)."""
        if not class_names:
            raise ValueError("the vocabulary is empty: give at least one class name")
        if self.training and torch.is_grad_enabled():
            return self._encode(class_names)
        key = (tuple(class_names), self.templates, str(self.device), self.clip.token_embedding.weight.dtype,
               self._weights_version())
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        with torch.no_grad(), full_precision(self.device):
            embeddings = self._encode(class_names)
        self._cache[key] = embeddings
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return embeddings

    def _encode(self, class_names: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenize(class_names)
        if torch.is_grad_enabled():  # training: the backward needs every prompt's activations anyway
            features = self.encode_tokens(tokens)
        else:  # chunks of prompts: the memory of a large vocabulary stays bounded (0.6 MB per prompt at once)
            features = torch.cat([self.encode_tokens(chunk) for chunk in tokens.split(ENCODE_CHUNK)])
        embeddings = F.normalize(features, dim=-1)
        return embeddings.view(len(class_names), self.num_templates, -1)

    def clear_cache(self):
        """Forget every cached vocabulary (needed only after writes through ``p.data``)."""
        self._cache.clear()
