"""The web app in a real browser: headless Chromium uploads an image, types a vocabulary, sets
the background threshold, runs, and the page's overlay, legend, table, click read-out and
downloaded files are compared with the Python API's output for the same input."""
import io
import json
import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cat_seg.api import CATSegError, OpenVocabSegmenter, parse_vocabulary

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs/quick_schedules/tiny_vitb_cpu.yaml"
STARTUP_GUARD_S = 1800  # hang guard only

VOCABULARY = "red striped, green dotted, blue speckled, sky"
THRESHOLD = 0.3


def _wait(condition, what: str, driver=None):
    """Poll ``condition()`` until truthy (hang guard only, never a timing criterion)."""
    deadline = time.monotonic() + STARTUP_GUARD_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"gave up waiting for {what}" + (f"; page: {driver.page_source[-2000:]}" if driver else ""))


@pytest.fixture(scope="module")
def test_image(tmp_path_factory):
    """A non-square scene of the synthetic toy benchmark, written as PNG."""
    from cat_seg.data.synthetic import render_sample, val_class_names

    image, _ = render_sample(np.random.default_rng(11), 160, [0, 5, 10], val_class_names())
    path = tmp_path_factory.mktemp("app-input") / "scene.png"
    Image.fromarray(image[:112]).save(path)  # 112 x 160
    return path


@pytest.fixture(scope="module")
def api_result(tiny_checkpoint, test_image):
    """What the Python API gives for the same image, vocabulary, model and threshold."""
    seg = OpenVocabSegmenter.from_config(str(TINY_CONFIG), weights=tiny_checkpoint, device="cpu")
    return seg(str(test_image), VOCABULARY, background=THRESHOLD)


def _click_run(driver):
    """Press Segment once the page shows the button (Gradio re-renders it while an upload is
    processed; on a busy machine it can be missing for a moment)."""
    _wait(lambda: _by_css(driver, "button#run"), "the Segment button", driver)[0].click()


def _by_css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _set_number(driver, selector, value):
    """Type into a Gradio number input (slider box) and commit it."""
    from selenium.webdriver.common.keys import Keys

    box = _by_css(driver, selector)[0]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def _fetch_png(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=60) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())))


def _error_toasts(driver):
    """The text of the error toasts shown; a toast removed while it is read (one fading out
    after its close button was clicked) is left out."""
    from selenium.common.exceptions import StaleElementReferenceException

    texts = []
    for toast in _by_css(driver, ".toast-body"):
        try:
            texts.append(toast.text)
        except StaleElementReferenceException:
            continue
    return " | ".join(text for text in texts if text)


def test_segment_in_the_browser_matches_the_api(app_server, browser, test_image, api_result):
    from selenium.webdriver.common.action_chains import ActionChains

    driver = browser
    driver.get(app_server)
    upload = _wait(lambda: _by_css(driver, "#images input[type=file]"), "the upload field", driver)[0]
    upload.send_keys(str(test_image))
    _wait(lambda: "scene" in driver.find_element("css selector", "#images").text, "the uploaded file", driver)
    _by_css(driver, "#vocab textarea")[0].send_keys(VOCABULARY)
    _set_number(driver, "#threshold input[type=number]", THRESHOLD)
    _click_run(driver)

    found = _wait(lambda: _error_toasts(driver) == "" and _by_css(driver, "#downloads a"), "the downloads", driver)
    links = {a.get_attribute("href").rsplit("/", 1)[-1]: a for a in found}
    assert sorted(links) == ["scene.json", "scene_labels.png", "scene_overlay.png"], sorted(links)

    # the overlay shown in the page is the API's overlay, pixel for pixel (legend drawn in it)
    overlay_src = _by_css(driver, "#overlay img")[0].get_attribute("src")
    np.testing.assert_array_equal(_fetch_png(overlay_src)[:, :, :3], api_result.overlay())

    # the legend of the segments lists exactly the classes the API found, the table too
    present = {name for name, area in api_result.areas().items() if area > 0}
    assert present, "the API labels no pixel: pick another threshold for this test"
    legend = _wait(lambda: {e.text.strip() for e in _by_css(driver, "#segments .legend-item") if e.text.strip()},
                   "the legend", driver)
    assert legend == present
    table_text = driver.find_element("css selector", "#table").text
    for name, area in api_result.areas().items():
        if area:
            assert name in table_text and str(area) in table_text

    # downloaded label PNG (through the browser) = the API's label map
    links["scene_labels.png"].click()
    target = driver.download_dir / "scene_labels.png"
    _wait(lambda: target.is_file() and not list(driver.download_dir.glob("*.crdownload")), "the label PNG download")
    np.testing.assert_array_equal(np.asarray(Image.open(target)), api_result.label_png())
    assert (api_result.label_png() == 255).any() and (api_result.label_png() < 255).any()  # threshold applied

    # the JSON (fetched from its link) carries the same statistics as the API
    with urllib.request.urlopen(links["scene.json"].get_attribute("href"), timeout=60) as r:
        info = json.loads(r.read())
    expected = api_result.to_json()
    assert info["classes"] == expected["classes"] and info["background"] == THRESHOLD
    assert [c["area"] for c in info["per_class"]] == [c["area"] for c in expected["per_class"]]

    # clicking the overlay reads the class under the cursor
    image_element = _by_css(driver, "#overlay img")[0]
    ActionChains(driver).move_to_element(image_element).click().perform()
    read_out = re.compile(r"\((\d+), (\d+)\): (.*)")

    def clicked_read_out():  # the box shows its hint until the click's answer arrives
        value = _by_css(driver, "#pixel textarea, #pixel input")[0].get_attribute("value")
        return read_out.match(value or "")

    match = _wait(clicked_read_out, "the read-out of the clicked pixel", driver)
    x, y = int(match.group(1)), int(match.group(2))
    assert abs(x - 80) <= 2 and abs(y - 56) <= 2  # the centre of the 160 x 112 image
    label = int(api_result.label_map[y, x])
    assert match.group(3).startswith(api_result.classes[label] + " (confidence" if label >= 0 else "unlabeled")


def test_bad_inputs_give_the_library_messages(app_server, browser, tmp_path):
    """An empty vocabulary and a file that is not an image: the page shows the same message as
    the command line / API (which raise it), nothing is produced."""
    driver = browser
    driver.get(app_server)
    upload = _wait(lambda: _by_css(driver, "#images input[type=file]"), "the upload field", driver)[0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a PNG")
    upload.send_keys(str(broken))
    _wait(lambda: "broken" in driver.find_element("css selector", "#images").text, "the uploaded file", driver)

    with pytest.raises(CATSegError) as empty:
        parse_vocabulary("")
    _click_run(driver)
    _wait(lambda: str(empty.value) in _error_toasts(driver), f"the message {empty.value!r}", driver)

    for toast_close in _by_css(driver, ".toast-close"):
        toast_close.click()
    _by_css(driver, "#vocab textarea")[0].send_keys("cat, dog")
    _click_run(driver)
    # the image's message, also while the closed toast of the vocabulary may still be fading out
    unreadable = re.compile(r"cannot read image '[^']*broken\.png': UnidentifiedImageError")
    _wait(lambda: unreadable.search(_error_toasts(driver)), "the message about the unreadable image", driver)
    assert not _by_css(driver, "#downloads a")
