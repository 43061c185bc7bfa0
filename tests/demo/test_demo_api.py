"""Python API (``cat_seg.OpenVocabSegmenter``) on the tiny CPU model with saved random weights."""
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cat_seg import CATSegError, OpenVocabSegmenter, SegmentationResult
from cat_seg.api import BACKGROUND_PROMPTS, UNLABELED, parse_vocabulary, parse_vocabulary_text, read_vocabulary_file

VOCAB = ["cat", "dog", "grass"]


def test_weights_are_loaded(segmenter, checkpoint):
    """``weights=`` loads the checkpoint (the fixture built the model from another seed)."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    state = segmenter.model.state_dict()
    assert segmenter.weights == checkpoint
    for key in ("sem_seg_head.guidance_upsample.0.weight", "backbone.clip.visual.conv1.weight"):
        assert torch.equal(state[key], saved[key])


def test_single_image_result(segmenter, images):
    image = images[0]
    result = segmenter(image, VOCAB)
    assert isinstance(result, SegmentationResult)
    h, w = image.shape[:2]
    assert result.classes == VOCAB
    assert result.label_map.shape == (h, w) and result.label_map.dtype == np.int32
    assert tuple(result.probs.shape) == (3, h, w) and result.probs.dtype == torch.float32
    assert result.label_map.min() >= 0 and result.label_map.max() < 3
    assert np.array_equal(result.label_map, result.probs.argmax(0).numpy())
    assert np.array_equal(result.image, image)
    areas = result.areas()
    assert list(areas) == VOCAB and sum(areas.values()) == h * w
    summary = json.loads(json.dumps(result.to_json()))
    assert summary["image_size"] == {"height": h, "width": w}
    assert [c["area"] for c in summary["per_class"]] == [areas[c] for c in VOCAB]
    for entry in summary["per_class"]:
        if entry["area"]:
            mask = result.label_map == entry["index"]
            assert entry["mean_probability"] == pytest.approx(float(result.probs[entry["index"]].numpy()[mask].mean()), abs=1e-6)
        else:
            assert entry["mean_probability"] is None


def test_vocabulary_change_between_calls(segmenter, images):
    first = segmenter(images[0], "cat, dog")
    second = segmenter(images[0], ["car", "road", "tree", "sky", "person"])
    again = segmenter(images[0], "cat, dog")
    assert first.classes == ["cat", "dog"] and second.classes == ["car", "road", "tree", "sky", "person"]
    assert first.probs.shape[0] == 2 and second.probs.shape[0] == 5
    assert first.label_map.max() <= 1
    assert second.label_map.max() <= 4 and second.label_map.max() >= 2  # the new labels are used
    # no stale text embeddings: going back to the first vocabulary gives the first result again
    assert torch.equal(first.probs, again.probs)
    assert np.array_equal(first.label_map, again.label_map)


def assert_same_labels(a: SegmentationResult, b: SegmentationResult):
    """Labels agree wherever float rounding cannot have flipped the argmax.

    Batched and single forwards differ by float rounding (~1e-7). The argmax can only differ
    where the two best classes are closer than twice the largest probability difference; the
    random-weight model has a few such (even exactly tied) pixels. Everywhere else the labels
    must be identical, and with identical probabilities they must be identical everywhere.
    """
    tolerance = 2 * float((a.probs - b.probs).abs().max())
    best_two = b.probs.topk(2, dim=0).values
    ambiguous = (best_two[0] - best_two[1] <= tolerance).numpy() if tolerance > 0 else np.zeros(a.label_map.shape, bool)
    assert ambiguous.mean() < 0.01
    assert np.array_equal(a.label_map[~ambiguous], b.label_map[~ambiguous])


def test_batch_matches_single(segmenter, images):
    batch = segmenter(images, VOCAB)
    assert isinstance(batch, list) and len(batch) == len(images)
    for image, batched in zip(images, batch):
        single = segmenter(image, VOCAB)
        assert batched.probs.shape == single.probs.shape
        assert torch.allclose(batched.probs, single.probs, atol=1e-5, rtol=0)
        assert_same_labels(batched, single)
    limited = segmenter(images, VOCAB, batch_size=1)
    for a, b in zip(batch, limited):
        assert torch.allclose(a.probs, b.probs, atol=1e-5, rtol=0)


def test_images_of_any_size_share_a_forward(segmenter, images, monkeypatch):
    calls = []
    forward = segmenter.model.forward

    def counting(batched_inputs, class_names=None):
        calls.append([tuple(x["image"].shape) for x in batched_inputs])
        return forward(batched_inputs, class_names)

    monkeypatch.setattr(segmenter.model, "forward", counting)
    segmenter(images, VOCAB, batch_size=3)
    assert len(calls) == 1 and len(set(calls[0])) == 2  # 96x128 twice and another size: one forward
    calls.clear()
    segmenter(images, VOCAB, batch_size=2)
    assert [len(c) for c in calls] == [2, 1]
    calls.clear()
    segmenter(images, VOCAB)  # default: TEST.IMS_PER_BATCH auto, 1 on CPU (memory grows with the batch)
    assert [len(c) for c in calls] == [1, 1, 1]


def test_path_pil_numpy_inputs_agree(segmenter, images, tmp_path):
    path = tmp_path / "image.png"
    Image.fromarray(images[2]).save(path)
    from_path = segmenter(str(path), VOCAB)
    from_pil = segmenter(Image.open(path), VOCAB)
    from_numpy = segmenter(images[2], VOCAB)
    assert from_path.source == str(path) and from_numpy.source is None
    for other in (from_pil, from_numpy):
        assert torch.equal(from_path.probs, other.probs)
        assert np.array_equal(from_path.label_map, other.label_map)
    grey = segmenter(Image.fromarray(images[2]).convert("L"), VOCAB)
    assert grey.image.shape == images[2].shape


@pytest.mark.parametrize("suffix", [".jpg", ".tiff", ".webp", ".avif"])
def test_orientation_tag_is_applied_once(suffix, tmp_path):
    from PIL import features

    if suffix == ".avif" and not features.check("avif"):
        pytest.skip("this Pillow is built without AVIF")
    """EXIF orientation 6 (rotate 90 degrees clockwise): a 32 x 64 landscape image with a
    white top-left corner is shown as a 64 x 32 portrait with the corner at the top right,
    from a path and from an opened image alike (Pillow's TIFF decoder applies the tag
    itself; detectron2's read_image applied it a second time)."""
    from cat_seg.api import load_image

    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:4, :4] = 255
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6
    path = tmp_path / f"rotated{suffix}"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    for loaded in (load_image(str(path)), load_image(Image.open(path))):
        assert loaded.shape == (64, 32, 3)
        corner = np.argwhere(loaded[..., 0] > 128)
        assert corner[:, 0].max() < 6 and corner[:, 1].min() > 26  # top right


def test_extremely_elongated_images_are_segmented(segmenter):
    """The resized short side of a 2 x 3000 strip rounds to 0 pixels in detectron2's resize
    (its long side is capped): it becomes 1 pixel, and the result has the image's size."""
    strip = np.full((2, 3000, 3), 128, np.uint8)
    result = segmenter(strip, VOCAB)
    assert result.label_map.shape == (2, 3000)
    assert segmenter.dense_features(strip, VOCAB).resized_size == (1, 640)


def test_probabilities_of_some_classes(segmenter, images):
    result = segmenter(images[0], VOCAB)
    some = result.probabilities(classes=["grass", 0])
    assert some.shape == (2, *images[0].shape[:2])
    torch.testing.assert_close(some, result.probs[[2, 0]])
    assert result.probabilities(torch.float16, classes=[1]).dtype == torch.float16
    with pytest.raises(CATSegError, match=r"class 'sky' is not in this result's vocabulary \(3 classes"):
        result.probabilities(classes=["sky"])
    with pytest.raises(CATSegError, match=r"class index 3: expected 0..2"):
        result.probabilities(classes=[3])


def test_dense_features_do_not_share_the_text_embedding_cache(segmenter, images):
    """Editing the returned features in place must not change later segmentations."""
    before = segmenter(images[0], VOCAB)
    features = segmenter.dense_features(images[0], VOCAB)
    features.text_embeddings.mul_(-1)
    features.to_numpy()["text_embeddings"][:] = 0
    after = segmenter(images[0], VOCAB)
    assert torch.equal(before.probs, after.probs)


def test_background_threshold(segmenter, images):
    plain = segmenter(images[1], VOCAB)
    best = plain.probs.max(0).values
    threshold = float(best.median())
    result = segmenter(images[1], VOCAB, background=threshold)
    unlabeled = result.label_map == UNLABELED
    assert np.array_equal(unlabeled, (best < threshold).numpy())
    assert 0 < unlabeled.sum() < unlabeled.size
    assert np.array_equal(result.label_map[~unlabeled], plain.label_map[~unlabeled])
    assert torch.equal(result.probs, plain.probs)
    assert sum(result.areas().values()) + result.unlabeled_area == unlabeled.size
    assert result.to_json()["unlabeled_area"] == int(unlabeled.sum())


def test_background_prompts(segmenter, images):
    result = segmenter(images[0], VOCAB, background="prompts")
    assert result.classes == VOCAB and result.probs.shape[0] == 3
    assert "grass" not in result.background_classes  # a user class is never background
    assert result.background_classes == [p for p in BACKGROUND_PROMPTS if p != "grass"]
    full = segmenter(images[0], VOCAB + result.background_classes)
    winner = full.label_map
    expected = np.where(winner >= 3, UNLABELED, winner)
    assert np.array_equal(result.label_map, expected)
    assert torch.equal(result.probs, full.probs[:3])


def test_dense_features(segmenter, images):
    model = segmenter.model
    features = segmenter.dense_features(images[0], "cat, dog, grass")
    grid = model.backbone.grid_size
    channels = model.backbone.embed_dim
    assert tuple(features.embeddings.shape) == (channels, *grid)
    assert features.input_size == model.backbone.resolution
    assert features.image_size == (96, 128)
    assert features.resized_size == (160, 213)  # ResizeShortestEdge(160, 640)
    assert features.padded_size == (160, 224)  # padded to a multiple of 32
    text = features.text_embeddings
    assert tuple(text.shape) == (3, 1, channels)
    assert torch.allclose(text, model.text_embeddings(VOCAB).cpu())
    image = F.normalize(features.embeddings, dim=0)
    expected = torch.einsum("chw,tc->thw", image, F.normalize(text[:, 0], dim=-1))
    assert tuple(features.cost_volume.shape) == (3, *grid)
    assert torch.allclose(features.cost_volume, expected, atol=1e-5)
    assert features.cost_volume.abs().max() <= 1 + 1e-5
    without = segmenter.dense_features(images[0])
    assert without.cost_volume is None and without.text_embeddings is None
    assert torch.allclose(without.embeddings, features.embeddings)
    arrays = features.to_numpy()
    assert arrays["cost_volume"].shape == (3, *grid) and list(arrays["classes"]) == VOCAB


@pytest.mark.parametrize("mode", ["L", "I;16", "RGBA", "RGB"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_orientation_of_uncompressed_tiffs_of_every_mode(mode, orientation, tmp_path):
    """Pillow's own TIFF decoder returned wrong pixels for uncompressed grey and RGBA TIFFs
    turned by 90 degrees (orientation 5 to 8); they are read with libtiff. Expected: the tag
    applied once to the pixels, as ImageOps.exif_transpose applies it to the image made in
    memory (8 bits: 16-bit samples scaled by 1/257)."""
    from PIL import ImageOps, features

    from cat_seg.api import load_image

    if not features.check("libtiff"):
        pytest.skip("this Pillow is built without libtiff, which reads such TIFFs right")
    grey = np.random.default_rng(orientation).integers(0, 256, (24, 40), dtype=np.uint8)
    pixels = {"L": grey, "I;16": grey.astype(np.uint16) * 257, "RGB": np.stack([grey, grey // 2, 255 - grey], 2),
              "RGBA": np.stack([grey, grey // 2, 255 - grey, np.full_like(grey, 255)], 2)}[mode]
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.tiff"
    Image.fromarray(pixels).save(path, exif=exif)  # uncompressed: Pillow's own decoder by default
    in_memory = Image.fromarray(pixels)
    in_memory.getexif()[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(in_memory))
    expected = (expected // 257).astype(np.uint8) if mode == "I;16" else expected
    expected = np.repeat(expected[..., None], 3, 2) if expected.ndim == 2 else expected[..., :3]
    loaded = load_image(str(path))
    assert loaded.shape == expected.shape and np.array_equal(loaded, expected)


def test_overlay_of_model_output(segmenter, images):
    result = segmenter(images[2], VOCAB, background="prompts")
    for legend in (True, False):
        overlay = result.overlay(legend=legend)
        assert overlay.shape == images[2].shape and overlay.dtype == np.uint8
    labeled = result.label_map >= 0
    changed = (result.overlay(legend=False).astype(int) != images[2].astype(int)).any(axis=2)
    assert changed[labeled].mean() > 0.5  # fragmented random-weight segments: borders are anti-aliased


def test_overlay_colours_labeled_pixels_only(image_factory):
    """Block label map: three labeled quadrants (interior pixels all recoloured), one unlabeled."""
    image = image_factory(5, 120, 160)
    labels = np.full((120, 160), UNLABELED, np.int32)
    labels[:60, :80], labels[:60, 80:], labels[60:, :80] = 0, 1, 2
    probs = torch.zeros(3, 120, 160)
    result = SegmentationResult(image=image, classes=["cat", "dog", "person, human"], label_map=labels, probs=probs)
    overlay = result.overlay(legend=False)
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    changed = (overlay.astype(int) != image.astype(int)).any(axis=2)
    interior = np.zeros_like(changed)
    for y, x in ((0, 0), (0, 80), (60, 0)):
        interior[y + 3:y + 57, x + 3:x + 77] = True
    assert changed[interior].all()
    assert changed[63:117, 83:157].mean() < 0.05  # unlabeled quadrant: input kept
    with_legend = result.overlay(legend=True)
    assert with_legend.shape == image.shape
    assert (with_legend != overlay).any(axis=2)[:60, 80:].mean() > 0.05  # legend in the top-right corner


def test_a_result_built_from_a_label_map_alone_is_saved_without_probabilities(tmp_path, image_factory):
    """A result made by hand from a label map (e.g. a ground truth to visualise) has no
    probabilities: its JSON says null for them (to_json raised an AttributeError)."""
    labels = np.zeros((20, 30), np.int32)
    labels[:, 15:] = 1
    result = SegmentationResult(image=image_factory(1, 20, 30), classes=["cat", "dog"], label_map=labels)
    assert result.mean_probabilities() == {"cat": None, "dog": None}
    with pytest.raises(ValueError, match="neither a confidence map nor probabilities"):
        result.confidence_map()
    paths = result.save(str(tmp_path / "gt"))
    record = json.load(open(paths["json"]))
    assert [(c["area"], c["mean_probability"]) for c in record["per_class"]] == [(300, None), (300, None)]


def test_an_error_while_writing_an_image_leaves_no_file(tmp_path, image_factory):
    """Not only OSErrors: a writer's own error (here a malformed overlay) leaves neither the
    image's files nor their temporary files; it is raised as it is."""
    result = SegmentationResult(image=image_factory(1, 8, 8), classes=["cat"], label_map=np.zeros((8, 8), np.int32))
    with pytest.raises(TypeError):
        result.save(str(tmp_path / "x"), overlay=np.zeros((8, 8, 5)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("width, fits", [(640, True), (60, True), (12, False)])
def test_legend_of_a_narrow_image_is_written_smaller_or_left_out(width, fits, monkeypatch):
    """The legend stays inside the image: written smaller on a narrow one (it was cut off at the
    left edge), left out where even letters of the smallest size would not fit."""
    import cat_seg.api as api

    drawn = []
    draw_legend = api.SegmentationResult._draw_legend

    def recording(self, output, *args, **kwargs):
        drawn.append((output, draw_legend(self, output, *args, **kwargs)))
        return drawn[-1][1]

    monkeypatch.setattr(api.SegmentationResult, "_draw_legend", recording)
    names = ["motorbike", "potted plant", "tv monitor", "dining table"]
    labels = (np.arange(400)[:, None] * 4 // 400).repeat(width, 1)
    result = SegmentationResult(image=np.full((400, width, 3), 128, np.uint8), classes=names, label_map=labels,
                                probs=torch.rand(4, 400, width))
    overlay_with, overlay_without = result.overlay(), result.overlay(legend=False)
    ((output, legend),) = drawn
    if not fits:
        assert legend is None and np.array_equal(overlay_with, overlay_without)
        return
    box = legend.get_window_extent(output.canvas.get_renderer())
    assert 0 <= box.x0 < box.x1 <= output.width * output.scale
    letter_px = legend.get_texts()[0].get_fontsize() * output.dpi / 72
    assert letter_px >= api.LEGEND_MIN_FONT_PX
    if width == 640:  # room enough: the size of the segment names' font, as before
        assert letter_px > 10
    assert [t.get_text() for t in legend.get_texts()][:1] == ["motorbike"]
    assert (overlay_with != overlay_without).any()


def test_legend_of_a_hand_made_map_lists_its_classes_only(monkeypatch):
    """A label map made by hand whose largest region holds a value no class has (a ground
    truth's 255) is drawn with a legend of its classes (the legend counted pixels its own way
    and indexed the class names with 255)."""
    import cat_seg.api as api

    drawn = []
    draw_legend = api.SegmentationResult._draw_legend
    monkeypatch.setattr(api.SegmentationResult, "_draw_legend",
                        lambda self, *args, **kwargs: drawn.append(draw_legend(self, *args, **kwargs)) or drawn[-1])
    labels = np.zeros((400, 600), np.int64)
    labels[:300] = 255
    labels[350:] = 1
    result = SegmentationResult(image=np.full((400, 600, 3), 128, np.uint8), classes=["sky", "road"], label_map=labels)
    assert result.overlay().shape == (400, 600, 3)
    assert [t.get_text() for t in drawn[0].get_texts()] == ["sky", "road"]


def test_vocabulary_parsing(tmp_path, monkeypatch):
    assert parse_vocabulary("cat, dog") == ["cat", "dog"]
    assert parse_vocabulary("person,  human ; dog;") == ["person, human", "dog"]
    assert parse_vocabulary(["building, edifice", " sky "]) == ["building, edifice", "sky"]
    # the full-width separators of CJK input methods
    assert parse_vocabulary("猫，狗") == ["猫", "狗"]
    assert parse_vocabulary("人，人类；狗") == ["人, 人类", "狗"]
    assert parse_vocabulary("猫、犬") == ["猫", "犬"]
    # one class per line, or a list: the full-width comma still separates synonyms
    assert parse_vocabulary_text("人，人类\n狗") == parse_vocabulary("人，人类；狗") == ["人, 人类", "狗"]
    assert parse_vocabulary(["人，人类", "狗"]) == ["人, 人类", "狗"]
    # ';' separates classes on a line of a several-line text too (it made one class "cat; dog")
    assert parse_vocabulary_text("person, human; dog\ncat;\n# note\nsky") == ["person, human", "dog", "cat", "sky"]
    assert parse_vocabulary_text("人，人类；狗\n猫") == ["人, 人类", "狗", "猫"]
    with pytest.raises(CATSegError, match="class name at position 1 of the class list is blank"):
        parse_vocabulary_text("cat;; dog\nsky")
    # a file's name given as the vocabulary (it segmented every pixel as the class "classes.json")
    (tmp_path / "tree").write_text("a file named like a class")
    monkeypatch.chdir(tmp_path)
    assert parse_vocabulary("tree") == ["tree"]  # a class name, even beside a file of that name
    for name in ("data/classes.json", "classes.TXT", str(tmp_path / "vocabulary")):
        (tmp_path / "vocabulary").write_text("cat\ndog\n")
        with pytest.raises(CATSegError, match=f"the vocabulary '{re.escape(name)}' looks like a file name, not class "
                                              "names: read a file of classes with --vocab-file"):
            parse_vocabulary(name)
    assert parse_vocabulary("cat, dog.txt") == ["cat", "dog.txt"]  # among classes: a class name
    assert parse_vocabulary(["\u200bcat", "dog\u200b"]) == ["cat", "dog"]
    with pytest.raises(CATSegError, match="empty vocabulary"):
        parse_vocabulary(["\u200b"])
    (tmp_path / "classes.json").write_text(json.dumps(["wall, brick wall", "floor"]))
    (tmp_path / "classes.txt").write_text("# my classes\ncat\n\nperson, human\n")
    assert read_vocabulary_file(str(tmp_path / "classes.json")) == ["wall, brick wall", "floor"]
    assert read_vocabulary_file(str(tmp_path / "classes.txt")) == ["cat", "person, human"]
    # a single line is read like --vocab (as the web app's box); JSON text in any file is JSON
    (tmp_path / "classes.csv").write_text("cat,dog,grass\n")
    assert read_vocabulary_file(str(tmp_path / "classes.csv")) == ["cat", "dog", "grass"]
    (tmp_path / "list.txt").write_text('["cat", "person, human"]\n')
    assert read_vocabulary_file(str(tmp_path / "list.txt")) == ["cat", "person, human"]
    (tmp_path / "twice.txt").write_text("cat, dog, Cat\n")
    with pytest.raises(CATSegError, match=r"class 'Cat' appears twice in the vocabulary \(file .*twice.txt\)"):
        read_vocabulary_file(str(tmp_path / "twice.txt"))


def test_vocabulary_file_names_a_packaged_vocabulary(tmp_path, monkeypatch):
    """``datasets/ade150.json`` (as the official configs and the guide name it) reads the packaged
    list when no such file exists; an existing file of that name wins."""
    monkeypatch.chdir(tmp_path)
    ade = read_vocabulary_file("datasets/ade150.json")
    assert len(ade) == 150 and ade[0] == "wall"
    assert read_vocabulary_file("pc59.json")[:2] == ["aeroplane", "bag"]
    (tmp_path / "pc59.json").write_text(json.dumps(["mine"]))
    assert read_vocabulary_file("pc59.json") == ["mine"]
    with pytest.raises(CATSegError, match=r"vocabulary file 'nope.txt' not found \(relative to the working folder "
                                          r".*\), and it names no packaged"):
        read_vocabulary_file("nope.txt")


def test_every_packaged_vocabulary_is_usable(caplog):
    """Each packaged list reads as a vocabulary. ADE-847 has different classes with the same
    first synonym (``screen, crt screen`` / ``screen, silver screen, ...``): allowed, with one
    warning; the same entry twice stays an error; a byte-order mark is not part of a name."""
    from cat_seg.data.catalog import vocabulary_keys, vocabulary_path

    for key in vocabulary_keys():
        assert len(read_vocabulary_file(key)) == len(json.loads(vocabulary_path(key).read_text())), key
    assert parse_vocabulary("cat, kitty; cat") == ["cat, kitty", "cat"]
    with pytest.raises(CATSegError, match="class 'Cat' appears twice"):
        parse_vocabulary("cat, dog, Cat")


def test_a_shared_first_synonym_is_one_warning_per_vocabulary(segmenter, images, caplog):
    """Allowed with one warning: a folder segmented in batches (the demo) or a page's repeated
    requests warned at every call, and once more when the vocabulary was read."""
    with caplog.at_level("WARNING", logger="cat_seg.api"):
        for _ in range(3):
            segmenter(images[0], "cat, kitty; cat; dog")
        segmenter(images[0], "cat; dog")
    notes = [r.getMessage() for r in caplog.records if "share their first synonym" in r.getMessage()]
    assert len(notes) == 1 and "'cat' after 'cat, kitty'" in notes[0]


def test_background_prompts_leave_out_the_users_classes():
    prompts = OpenVocabSegmenter.background_prompts_for(["lawn, grass", "Trees", "wall"])
    assert "grass" not in prompts and "tree" not in prompts and "wall" not in prompts
    assert set(BACKGROUND_PROMPTS) - set(prompts) == {"grass", "tree", "wall"}


def test_background_threshold_accepts_numpy_scalars():
    assert OpenVocabSegmenter._check_background(np.float32(0.25)) == 0.25
    assert OpenVocabSegmenter._check_background(np.float64(1.0)) == 1.0
    for bad in (np.float32("nan"), np.bool_(True), True, "sky"):
        with pytest.raises(CATSegError, match="background"):
            OpenVocabSegmenter._check_background(bad)


def test_vocabulary_file_with_a_byte_order_mark(tmp_path):
    (tmp_path / "bom.txt").write_bytes("cat\ndog\n".encode("utf-8-sig"))
    (tmp_path / "bom.json").write_bytes(json.dumps(["cat", "dog"]).encode("utf-8-sig"))
    assert read_vocabulary_file(str(tmp_path / "bom.txt")) == ["cat", "dog"]
    assert read_vocabulary_file(str(tmp_path / "bom.json")) == ["cat", "dog"]


def test_synonyms_use_the_first_name(segmenter, images):
    with_synonym = segmenter(images[0], "person, human; dog")
    plain = segmenter(images[0], ["person", "dog"])
    assert with_synonym.classes == ["person, human", "dog"]
    assert torch.equal(with_synonym.probs, plain.probs)


@pytest.mark.parametrize("vocabulary", ["", " , ,", [], ["", "  "], ";"])
def test_empty_vocabulary_is_an_error(segmenter, images, vocabulary):
    with pytest.raises(CATSegError, match="empty vocabulary"):
        segmenter(images[0], vocabulary)


def test_bad_inputs_give_named_errors(segmenter, images, tmp_path, tiny):
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    with pytest.raises(CATSegError, match="cannot read image .*broken.jpg"):
        segmenter(str(bad), VOCAB)
    with pytest.raises(CATSegError, match="cannot read image .*missing.png.*no such file"):
        segmenter([images[0], str(tmp_path / "missing.png")], VOCAB)
    with pytest.raises(CATSegError, match="uint8"):
        segmenter(images[0].astype(np.float32), VOCAB)
    with pytest.raises(CATSegError, match=r"PIL images of floating-point samples \(mode F\) are not accepted"):
        segmenter(Image.fromarray(images[0][..., 0].astype(np.float32) / 255), VOCAB)
    closed = Image.fromarray(images[0])
    closed.close()
    with pytest.raises(CATSegError, match="cannot read the PIL image: Operation on closed image"):
        segmenter(closed, VOCAB)
    with pytest.raises(CATSegError, match="twice"):
        segmenter(images[0], "cat, dog, Cat")
    with pytest.raises(CATSegError, match="background"):
        segmenter(images[0], VOCAB, background="sky")
    with pytest.raises(CATSegError, match="weights file .*nowhere.pth.* not found"):
        OpenVocabSegmenter.from_config(tiny.config, weights=str(tmp_path / "nowhere.pth"), opts=tiny.opts)
    with pytest.raises(CATSegError, match=r"weights file .* is a directory; expected a checkpoint file"):
        OpenVocabSegmenter.from_config(tiny.config, weights=str(tmp_path), opts=tiny.opts)
    with pytest.raises(CATSegError, match=r"vocabulary file .* is a directory; expected a file of class names"):
        read_vocabulary_file(str(tmp_path))
    with pytest.raises(CATSegError, match="config file .*nope.yaml.* not found"):
        OpenVocabSegmenter.from_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(CATSegError, match="config file .* is a directory, expected a YAML file"):
        OpenVocabSegmenter.from_config(str(tmp_path))
    with pytest.raises(CATSegError, match=r"unknown config key 'TEST.SLIDING_WINDOWS' in the opts argument; "
                                          r"did you mean 'TEST.SLIDING_WINDOW'\?"):
        OpenVocabSegmenter.from_config(tiny.config, opts=["TEST.SLIDING_WINDOWS", "True"])
    with pytest.raises(CATSegError, match=r"CLIP_PRETRAINED='nope.json': model-config file not found"):
        OpenVocabSegmenter.from_config(tiny.config, opts=["MODEL.SEM_SEG_HEAD.CLIP_PRETRAINED", "nope.json"])
    with pytest.raises(CATSegError, match=r"MODEL.PRECISION='fp64': expected one of"):
        OpenVocabSegmenter.from_config(tiny.config, opts=["MODEL.PRECISION", "fp64"])
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"garbage")
    with pytest.raises(CATSegError, match="cannot load weights: .*corrupt.pth is not a readable torch checkpoint"):
        OpenVocabSegmenter.from_config(tiny.config, weights=str(corrupt), device="cpu", opts=tiny.opts)
    for call in (lambda: segmenter(str(bad), VOCAB), lambda: segmenter(images[0], "")):
        with pytest.raises(CATSegError) as error:
            call()
        assert "\n" not in str(error.value)  # one-line messages


def test_sliding_window_batches_mixed_sizes(checkpoint, images, tiny, monkeypatch):
    """With TEST.SLIDING_WINDOW every image is resized to the canvas: one forward for all sizes."""
    seg = OpenVocabSegmenter.from_config(
        tiny.config, weights=checkpoint, device="cpu", opts=tiny.opts + ["TEST.SLIDING_WINDOW", "True"]
    )
    calls = []
    forward = seg.model.forward

    def counting(batched_inputs, class_names=None):
        calls.append(len(batched_inputs))
        return forward(batched_inputs, class_names)

    monkeypatch.setattr(seg.model, "forward", counting)
    batch = seg([images[0], images[2]], VOCAB, batch_size=2)
    assert calls == [2]
    for image, batched in zip([images[0], images[2]], batch):
        single = seg(image, VOCAB)
        assert batched.label_map.shape == image.shape[:2]
        assert torch.allclose(batched.probs, single.probs, atol=1e-5, rtol=0)
        assert_same_labels(batched, single)


def test_class_statistics_in_blocks_equal_the_whole_map_formula(monkeypatch):
    """Areas and mean probabilities are summed in blocks of pixels (bounded memory on large
    images): the same as over the whole map, unlabeled pixels left out."""
    import cat_seg.api as api

    rng = np.random.default_rng(7)
    labels = rng.integers(-1, 5, size=(300, 401)).astype(np.int32)
    confidence = rng.random((300, 401)).astype(np.float32)
    result = SegmentationResult(image=np.zeros((300, 401, 3), np.uint8), classes=list("abcde"), label_map=labels,
                                confidence=confidence)
    monkeypatch.setattr(api, "_STATS_BLOCK", 1000)  # 121 blocks, the last one partial
    areas, means = result.areas(), result.mean_probabilities()
    for i, name in enumerate("abcde"):
        mask = labels == i
        assert areas[name] == int(mask.sum())
        assert means[name] == pytest.approx(float(confidence[mask].astype(np.float64).mean()), rel=1e-12)
    assert result.unlabeled_area == int((labels == -1).sum())
    # a map made by hand with values no class has (a ground truth's 255): counted for no class
    labels[0, :7] = 255
    labels[1, :3] = -2
    result = SegmentationResult(image=np.zeros((300, 401, 3), np.uint8), classes=list("abcde"), label_map=labels,
                                confidence=confidence)
    assert result.areas() == {name: int((labels == i).sum()) for i, name in enumerate("abcde")}


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_dense_features_are_the_embeddings_the_segmentation_used(tiny, checkpoint, images, precision):
    """In the model's precision: under bf16 the returned fp32 embeddings are the bf16 ones the
    whole-image inference computed (they were computed in fp32 apart from it, 0.02 off)."""
    segmenter = OpenVocabSegmenter.from_config(tiny.config, weights=checkpoint, device="cpu",
                                               opts=tiny.opts + ["MODEL.PRECISION", precision])
    if precision == "bf16" and segmenter.model.inference_dtype() is None:
        pytest.skip("this CPU has no native bf16: MODEL.PRECISION bf16 runs in fp32 here")
    backbone = segmenter.model.backbone
    seen = []
    forward = backbone.forward

    def recording(clip_images):
        features = forward(clip_images)
        seen.append(features["dense_embeddings"])
        return features

    backbone.forward = recording
    segmenter(images[0], VOCAB)
    del backbone.forward
    assert len(seen) == 1
    assert seen[0].dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    features = segmenter.dense_features(images[0], VOCAB)
    assert features.embeddings.dtype == torch.float32
    assert torch.equal(features.embeddings, seen[0][0].float())
