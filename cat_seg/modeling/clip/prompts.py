"""Prompt templates (``MODEL.PROMPT_ENSEMBLE_TYPE``) and class-name handling."""
from typing import Dict, List, Optional, Sequence, Tuple

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

SINGLE_TEMPLATE = "A photo of a {} in the scene"

# CoOp's hand-picked ImageNet templates plus the single CAT-Seg template.
IMAGENET_SELECT_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    SINGLE_TEMPLATE,
)


def _imagenet_templates() -> Tuple[str, ...]:
    # open_clip stores OpenAI's 80 ImageNet templates as callables; turn them into format strings.
    return tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)


PROMPT_TEMPLATES: Dict[str, Tuple[str, ...]] = {
    "single": (SINGLE_TEMPLATE,),
    "imagenet": _imagenet_templates(),
    "imagenet_select": IMAGENET_SELECT_TEMPLATES,
}


def get_templates(ensemble_type: str) -> Tuple[str, ...]:
    """Templates of ``MODEL.PROMPT_ENSEMBLE_TYPE`` (``single``, ``imagenet``, ``imagenet_select``)."""
    try:
        return PROMPT_TEMPLATES[ensemble_type]
    except KeyError:
        raise ValueError(
            f"MODEL.PROMPT_ENSEMBLE_TYPE={ensemble_type!r} is unknown; expected one of "
            f"{sorted(PROMPT_TEMPLATES)}"
        ) from None


def primary_name(class_name: str) -> str:
    """First synonym of a ``", "``-separated class name (official behaviour, ``docs/architecture.md``).

    ``"building, edifice"`` -> ``"building"``; surrounding whitespace is removed.
    """
    return class_name.split(", ")[0].strip()


def shared_first_synonym_note(classes: Sequence[str], source: str) -> Optional[str]:
    """The note for entries of ``classes`` that share their first synonym with an earlier entry
    (``"screen, silver screen"`` and ``"screen, crt screen"``: ADE-847 has 10 such classes), or
    ``None``. The model sees only the first synonym, so such classes get the same scores and the
    first listed wins their pixels."""
    primaries, shared = {}, []
    for name in classes:
        primary = primary_name(name).lower()
        if primary in primaries:
            shared.append(f"{name!r} after {primaries[primary]!r}")
        else:
            primaries[primary] = name
    if not shared:
        return None
    return (f"{len(shared)} class(es) of {source} share their first synonym, the name the model sees, "
            f"with an earlier class ({'; '.join(shared[:3])}{'; ...' if len(shared) > 3 else ''}): "
            f"they get the same scores, and the earlier class wins their pixels")


def build_prompts(class_names: Sequence[str], templates: Sequence[str]) -> List[str]:
    """Prompts in class-major order: ``[t0(c0), t1(c0), ..., t0(c1), ...]`` (``T*P`` strings)."""
    return [template.format(primary_name(name)) for name in class_names for template in templates]
