"""Fonts for the class names written on overlays (any script, not only Latin).

Overlays are drawn with matplotlib (detectron2's ``Visualizer``), which writes text in one
font, DejaVu Sans by default: it has no Chinese, Japanese, Korean, Thai, ... glyphs, so a class
named ``猫`` came out as an empty box, with one matplotlib warning per glyph and drawing.
matplotlib can take each glyph from the first font of a *list of families* that has it, but
it is given one family, and it only knows the fonts that were installed when it built its font
cache (a font installed later stays unknown to it until that cache is rebuilt).

:func:`font_families` finds, for the characters of some texts, the installed fonts that have
the glyphs the default font lacks (among matplotlib's fonts and the system's font files,
registering the latter with matplotlib) and returns the family list to draw them with; what
no installed font has is reported as missing, so the caller can say so once.
"""
import functools
import logging
import os
from typing import FrozenSet, Iterable, List, Tuple

__all__ = ["font_families", "missing_glyphs_message", "missing_glyphs_warning"]

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)  # the default font's; a CJK font's set is megabytes: not all kept
def _codepoints(path: str) -> FrozenSet[int]:
    """The code points a font file has glyphs for (its first face for collections); empty
    for a file FreeType cannot read."""
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


def _last_resort_path() -> str:
    """matplotlib's own final fallback font (every glyph a box): never a candidate."""
    import matplotlib

    return os.path.realpath(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "LastResortHE-Regular.ttf"))


def _default_font() -> Tuple[str, str]:
    """(family name, file) of the font matplotlib writes sans-serif text in."""
    from matplotlib import font_manager

    path = os.path.realpath(font_manager.findfont(font_manager.FontProperties(family=["sans-serif"])))
    return _family_name(path), path


def _family_name(path: str) -> str:
    """The family name matplotlib registers the font file ``path`` under."""
    from matplotlib import font_manager

    return font_manager.ttfFontProperty(font_manager.get_font(path)).name


def _needed(texts: Iterable[str]) -> FrozenSet[int]:
    return frozenset(ord(c) for text in texts for c in text if c.isprintable() and not c.isspace())


def _resolves_to(family: str, path: str) -> bool:
    """Whether matplotlib draws text of ``family`` (normal weight and style, as the overlays)
    from the file ``path``: a bold face, or one of two files of a family, is not usable."""
    from matplotlib import font_manager

    try:
        found = font_manager.findfont(font_manager.FontProperties(family=[family]), fallback_to_default=False)
    except ValueError:
        return False
    return os.path.realpath(found) == path


def _fallbacks(missing: FrozenSet[int]) -> Tuple[Tuple[str, ...], FrozenSet[int]]:
    """Families that cover ``missing`` (few fonts, greedily: the font with the most of the
    still-missing glyphs first; matplotlib's registered fonts before unregistered files, then by
    path), and the code points no installed font has. Cached per installed font files: a font
    installed while a program runs (the web app), as the missing-glyph warning advises, is
    found by the next drawing."""
    from matplotlib import font_manager

    installed = tuple(sorted(set(map(os.path.realpath, font_manager.findSystemFonts(fontext="ttf")))))
    return _fallbacks_among(missing, installed)


@functools.lru_cache(maxsize=64)
def _fallbacks_among(missing: FrozenSet[int], installed: Tuple[str, ...]) -> Tuple[Tuple[str, ...], FrozenSet[int]]:
    """:func:`_fallbacks` among the system font files ``installed`` (real paths)."""
    from matplotlib import font_manager

    last_resort = _last_resort_path()
    registered = {}
    for entry in font_manager.fontManager.ttflist:
        registered.setdefault(os.path.realpath(entry.fname), entry.name)
    system = [path for path in installed if path not in registered]
    # each font file read once, keeping only what it has of the missing glyphs
    covers = {}
    for path in sorted(registered) + system:
        if path != last_resort:
            found = missing & _codepoints(path)
            if found:
                covers[path] = found

    families: List[str] = []
    remaining = set(missing)
    while remaining and covers:
        path = max(covers, key=lambda p: len(covers[p] & remaining))  # first of the best: stable
        found = covers.pop(path) & remaining
        if not found:
            break
        if path not in registered:  # installed after matplotlib built its font list
            try:
                font_manager.fontManager.addfont(path)
                registered[path] = _family_name(path)
            except (OSError, RuntimeError, ValueError, KeyError):  # a file matplotlib cannot register
                continue
        name = registered[path]
        _quiet_weight_substitution([name])  # before matplotlib first resolves it
        if name in families or not _resolves_to(name, path):
            continue
        families.append(name)
        remaining -= found
    return tuple(families), frozenset(remaining)


class FallbackWeightFilter(logging.Filter):
    """Drops matplotlib's "findfont: Failed to find font weight normal for F, now using 500"
    for the fallback families F chosen here (a CJK font may have no normal weight, e.g.
    WenQuanYi Zen Hei's 500): logged for every text size, about a substitution that is
    expected, so noise for the user. Installed once on matplotlib's font logger; other
    messages pass."""

    def __init__(self):
        super().__init__()
        self.families = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("findfont: Failed to find font weight")
                    and len(record.args or ()) > 1 and record.args[1] in self.families)


WEIGHT_FILTER = FallbackWeightFilter()


def _quiet_weight_substitution(families: Iterable[str]) -> None:
    WEIGHT_FILTER.families.update(families)
    font_logger = logging.getLogger("matplotlib.font_manager")
    if WEIGHT_FILTER not in font_logger.filters:
        font_logger.addFilter(WEIGHT_FILTER)


def font_families(texts: Iterable[str]) -> Tuple[List[str], str]:
    """The font families to write ``texts`` in, and the characters no installed font has.

    Returns ``(families, missing)``: ``families`` is ``[]`` when matplotlib's default
    sans-serif font has every glyph (draw as usual); otherwise that font's family followed by
    the fallbacks for the other glyphs (pass it as ``fontfamily``; matplotlib takes each glyph
    from the first family that has it). ``missing`` holds the characters no installed font has
    (drawn as boxes), in order of first appearance, each once.
    """
    texts = list(texts)
    default_family, default_path = _default_font()
    missing = _needed(texts) - _codepoints(default_path)
    if not missing:
        return [], ""
    fallbacks, absent = _fallbacks(frozenset(missing))
    families = [default_family] + [f for f in fallbacks if f != default_family] if fallbacks else []
    absent_chars = "".join(dict.fromkeys(c for text in texts for c in text if ord(c) in absent))
    return families, absent_chars


# characters already reported by missing_glyphs_warning in this process
_REPORTED_MISSING = set()


def missing_glyphs_warning(missing: str) -> None:
    """Log a warning once per process about each character no installed font has (a video's
    frames or a folder's images draw the same names again and again): one line, as the
    library's other warnings (a Python ``UserWarning`` printed the drawing code's file, line
    and source with it)."""
    new = "".join(dict.fromkeys(c for c in missing if c not in _REPORTED_MISSING))
    if new:
        _REPORTED_MISSING.update(new)
        logger.warning(missing_glyphs_message(new))


def missing_glyphs_message(missing: str) -> str:
    """One line for characters no installed font has."""
    return (
        f"no installed font has the characters {missing!r} of the class names: they are drawn as "
        "boxes; install a font that has them (e.g. Noto, `apt install fonts-noto-cjk` for Chinese, "
        "Japanese and Korean) and run again"
    )
