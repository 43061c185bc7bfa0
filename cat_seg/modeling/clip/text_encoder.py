"""Class-name embeddings: prompts -> tokens -> CLIP text tower, with an inference cache."""
from collections import OrderedDict
from typing import Callable, Hashable, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from .prompts import build_prompts, get_templates


class ClassTextEncoder:
    """Embeds a vocabulary of class names with a CLIP text tower.

    Not an ``nn.Module``: it owns no parameters. ``encode_tokens`` is the text tower
    (``tokens [N, context] -> [N, C]``), and ``parameters`` the tensors whose values the
    embeddings depend on (for cache invalidation).

    In training mode (``torch.is_grad_enabled()`` and ``training=True``) embeddings are
    recomputed on every call, with gradients (the text tower is fine-tuned). Otherwise results
    are cached, keyed by the class list, templates, device, dtype and the identity and version
    counters of the text-tower parameters, so a changed vocabulary or an optimizer step / weight load
    never returns stale embeddings.

    Args:
        encode_tokens: the text tower.
        parameters: callable returning the text-tower parameters.
        prompt_ensemble_type: ``single`` | ``imagenet`` | ``imagenet_select``.
        context_length: tokenizer context length (77 for CLIP).
        cache_size: vocabularies kept in the cache.
    """

    def __init__(
        self,
        encode_tokens: Callable[[torch.Tensor], torch.Tensor],
        parameters: Callable[[], Sequence[nn.Parameter]],
        prompt_ensemble_type: str = "single",
        context_length: int = 77,
        cache_size: int = 8,
    ):
        self.encode_tokens = encode_tokens
        self.parameters = parameters
        self.templates = get_templates(prompt_ensemble_type)
        self.context_length = context_length
        self.cache_size = cache_size
        self._cache: "OrderedDict[Hashable, torch.Tensor]" = OrderedDict()

    @property
    def num_templates(self) -> int:
        return len(self.templates)

    def tokenize(self, class_names: Sequence[str], device: torch.device) -> torch.Tensor:
        """``[T*P, context]`` token ids in class-major order."""
        prompts = build_prompts(class_names, self.templates)
        return open_clip.tokenize(prompts, context_length=self.context_length).to(device)

    def _weights_version(self) -> Tuple[Tuple[int, int], ...]:
        """Identity and version counter of every text-tower tensor: any in-place update
        (optimizer step, ``load_state_dict``) bumps a counter, and a replaced tensor
        (``load_state_dict(assign=True)``, ``p.data = ...``) changes the identity."""
        return tuple((p.data_ptr(), p._version) for p in self.parameters())

    def __call__(self, class_names: Sequence[str], device: torch.device, training: bool = False) -> torch.Tensor:
        """L2-normalised embeddings ``[T, P, C]`` of ``class_names`` (P = number of templates)."""
        if not class_names:
            raise ValueError("the vocabulary is empty: give at least one class name")
        if training and torch.is_grad_enabled():
            return self._encode(class_names, device)
        params = self.parameters()
        key = (tuple(class_names), self.templates, str(device), params[0].dtype, self._weights_version())
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        # cached embeddings are always computed in full precision (once per vocabulary, so
        # the cost does not matter), whatever autocast context the first call came from
        with torch.no_grad(), torch.autocast(torch.device(device).type, enabled=False):
            embeddings = self._encode(class_names, device)
        self._cache[key] = embeddings
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return embeddings

    def _encode(self, class_names: Sequence[str], device: torch.device) -> torch.Tensor:
        tokens = self.tokenize(class_names, device)
        embeddings = F.normalize(self.encode_tokens(tokens), dim=-1)
        return embeddings.view(len(class_names), self.num_templates, -1)

    def clear_cache(self):
        self._cache.clear()
