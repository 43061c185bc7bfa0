"""Class names in scripts the default font lacks: fallback fonts for the overlay's text
(``cat_seg.fonts``), one warning for characters no installed font has."""
import logging
import os
import unicodedata
import warnings

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib import font_manager

from cat_seg import SegmentationResult, fonts


@pytest.fixture(autouse=True)
def fresh_font_search():
    fonts._fallbacks_among.cache_clear()
    fonts._REPORTED_MISSING.clear()
    yield
    fonts._fallbacks_among.cache_clear()
    fonts._REPORTED_MISSING.clear()


def _result(names):
    image = np.full((160, 240, 3), 128, np.uint8)
    labels = np.zeros((160, 240), np.int32)
    labels[:, 120:] = 1
    return SegmentationResult(image=image, classes=names, label_map=labels, probs=torch.rand(len(names), 160, 240))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _draw(result):
    """The overlay, and the warnings of the drawing: Python warnings (matplotlib's per glyph)
    and the log's (cat-seg's)."""
    records = _Records()
    logging.getLogger("cat_seg").addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            overlay = result.overlay()
    finally:
        logging.getLogger("cat_seg").removeHandler(records)
    return overlay, [str(w.message) for w in caught] + records.messages


def _shipped_font_with_extra_glyph():
    """(path, character): a font file matplotlib ships and registers, with a visible character
    (a letter or symbol) that the default sans-serif font lacks."""
    _, default_path = fonts._default_font()
    default = fonts._codepoints(default_path)
    shipped = os.path.realpath(os.path.join(matplotlib.get_data_path(), "fonts", "ttf"))
    for entry in sorted(font_manager.fontManager.ttflist, key=lambda e: e.fname):
        path = os.path.realpath(entry.fname)
        if not path.startswith(shipped) or path == fonts._last_resort_path():
            continue
        if not fonts._resolves_to(entry.name, path):
            continue
        for code in sorted(fonts._codepoints(path) - default):
            char = chr(code)
            if unicodedata.category(char)[0] in "LS" and char.isprintable():
                return path, char
    pytest.skip("no font shipped with matplotlib has a glyph its default font lacks")


def test_default_font_needs_no_fallback():
    assert fonts.font_families(["cat", "dog, puppy", "Café"]) == ([], "")


def test_glyphs_the_default_font_lacks_come_from_a_font_that_has_them():
    path, char = _shipped_font_with_extra_glyph()
    families, missing = fonts.font_families([f"{char} thing", "dog"])
    assert missing == ""
    assert families[0] == fonts._default_font()[0]  # Latin text keeps the default font
    assert any(ord(char) in fonts._codepoints(font_manager.findfont(font_manager.FontProperties(family=[f])))
               for f in families[1:])

    drawn, messages = _draw(_result([f"{char}{char}{char}", "dog"]))
    assert not [m for m in messages if "missing" in m]
    # the same drawing without the fallback writes boxes: other pixels
    boxes = _result([f"{char}{char}{char}", "dog"])
    original = fonts._fallbacks
    try:
        fonts._fallbacks = lambda missing: ((), missing)
        boxed, _ = _draw(boxes)
    finally:
        fonts._fallbacks = original
    assert drawn.shape == boxed.shape and (drawn != boxed).any()


def test_font_installed_after_matplotlib_built_its_font_list(monkeypatch):
    """A system font file matplotlib does not know yet is found and registered."""
    path, char = _shipped_font_with_extra_glyph()
    family = fonts._family_name(path)
    default_family = fonts._default_font()[0]
    kept = [e for e in font_manager.fontManager.ttflist if e.name == default_family]  # all others unknown
    monkeypatch.setattr(font_manager.fontManager, "ttflist", kept)
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *a, **k: [path])
    font_manager.fontManager._findfont_cached.cache_clear()
    try:
        families, missing = fonts.font_families([char])
        assert missing == "" and families[1] == family
        assert any(os.path.realpath(e.fname) == path for e in font_manager.fontManager.ttflist)  # registered
    finally:
        font_manager.fontManager._findfont_cached.cache_clear()


def test_characters_no_font_has_give_one_warning(monkeypatch):
    """Characters without a glyph in any installed font: one warning naming them and what to
    install, instead of matplotlib's warning per glyph and drawing; the overlay is drawn."""
    _, default_path = fonts._default_font()
    real = fonts._codepoints
    monkeypatch.setattr(fonts, "_codepoints", lambda p: real(p) if p == default_path else frozenset())
    assert fonts.font_families(["猫", "犬, dog", "猫猫"]) == ([], "猫犬")

    overlay, messages = _draw(_result(["猫", "犬, dog"]))
    assert overlay.shape == (160, 240, 3)
    assert len(messages) == 1, messages
    assert "'猫犬'" in messages[0] and "install a font" in messages[0]
    # a video's frames or a folder's images draw the names again: one warning per character
    # and process (it repeated on every drawing), a new character is named alone
    assert _draw(_result(["猫", "犬, dog"]))[1] == []
    messages = _draw(_result(["猫", "鳥"]))[1]
    assert len(messages) == 1 and "'鳥'" in messages[0], messages


def test_weight_substitution_of_a_fallback_font_is_not_logged():
    """matplotlib's "Failed to find font weight" about a chosen fallback family is dropped;
    the same message about another family, and other messages, pass."""
    import logging

    def record(msg, *args):
        return logging.LogRecord("matplotlib.font_manager", logging.WARNING, __file__, 1, msg, args, None)

    weight = "findfont: Failed to find font weight %s for %s, now using %s."
    fonts._quiet_weight_substitution(["Some CJK Sans"])
    assert fonts.WEIGHT_FILTER in logging.getLogger("matplotlib.font_manager").filters
    assert not fonts.WEIGHT_FILTER.filter(record(weight, "normal", "Some CJK Sans", 500))
    assert fonts.WEIGHT_FILTER.filter(record(weight, "normal", "DejaVu Sans", 500))
    assert fonts.WEIGHT_FILTER.filter(record("findfont: Font family %r not found.", "Some CJK Sans"))


def test_a_font_installed_while_the_program_runs_is_searched(monkeypatch, tmp_path):
    """The search for fallback fonts was cached by the missing characters alone, so a font
    installed after a drawing warned about them (the web app runs on) was never found; the
    cache is per set of installed font files."""
    listed = [[]]
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda fontext="ttf": list(listed[0]))
    missing = frozenset({0x10FFFD})  # a private-use code point no font draws
    assert fonts._fallbacks(missing) == ((), missing)
    assert fonts._fallbacks(missing) == ((), missing)
    assert fonts._fallbacks_among.cache_info().misses == 1  # the same fonts: searched once
    new_font = tmp_path / "installed_later.ttf"
    new_font.write_bytes(b"")  # not a font matplotlib can read: found, read, and left out
    listed[0] = [str(new_font)]
    assert fonts._fallbacks(missing) == ((), missing)
    assert fonts._fallbacks_among.cache_info().misses == 2  # another set of fonts: searched again

