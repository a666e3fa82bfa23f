"""The page at `/` in a real browser (Debian's Chromium driven by Playwright) against a real server of the
bundled models: files are dropped on it as a user would, and the test reads what it drew.

Inputs: real FSDD recordings (../shared/data/fsdd; espeak-ng speech where that folder is missing), a 30 s
recording made of them (one recording per model window, so its timeline must change), an upscaled
load_digits image and a moving-digit clip made the way bridle/data/demo_data.py makes its training sets, and
a broken file. The canvases' pixels are read back: each must hold more than one colour. With
BRIDLE_PAGE_SCREENSHOTS=DIR the results are saved there as PNGs (`make page-screenshots` writes docs/).
"""

from __future__ import annotations

import base64
import io
import math
import os
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Server, run_server
from PIL import Image

from bridle.data.demo_data import (
    DIGIT_WORDS,
    SPRITE_SIZE,
    VIDEO_FPS,
    digit_images,
    moving_digit,
    resample_wav,
    upscale,
    write_mp4,
)
from bridle.data.media_files import encode_audio
from bridle.model.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]
MODELS = [REPO / "models" / m for m in ("audio-digits", "image-digits", "video-motion")]
FSDD = REPO.parent / "shared" / "data" / "fsdd"
CHROMIUM = Path("/usr/bin/chromium")
PAGE_BYTES = 200_000
RATE = 8000  # FSDD's sample rate
IMAGE = 1795  # a load_digits image of the held-out end (tests/service/test_bundled_models.py)

playwright_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Chromium is missing: scripts/system-deps.sh installs it"
)


# ---- media ---------------------------------------------------------------------------------------


def recording(digit: int, take: int, speaker: str = "jackson") -> tuple[str, bytes, str]:
    """FSDD's recording `take` of `digit` by `speaker` (../shared/data/fsdd); where that folder is missing,
    espeak-ng's en-us voice saying the digit (a rate per take) at FSDD's 8 kHz."""
    path = FSDD / f"{digit}_{speaker}_{take}.wav"
    if FSDD.is_dir():
        return path.name, path.read_bytes(), "audio/wav"
    samples = resample_wav(
        subprocess.run(
            ["espeak-ng", "-v", "en-us", "-s", str(130 + 10 * take), "--stdout", DIGIT_WORDS[digit]],
            check=True,
            capture_output=True,
            timeout=30,
        ).stdout,
        RATE,
    )
    return path.name, wav_bytes(samples), "audio/wav"


def wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE)
        w.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


def long_recording(seconds: float = 30.0) -> bytes:
    """A `seconds` long 8 kHz wav of recordings of the ten digits in turn, one centred in each window of
    audio-digits, so that each window holds one spoken digit: 0, 1, 2, ... 9, 0, 1, ..."""
    window = read_manifest(MODELS[0]).input.window_seconds
    assert window is not None
    slot = round(window * RATE)
    out = np.zeros(int(seconds * RATE), np.int16)
    for k in range(len(out) // slot):
        with wave.open(io.BytesIO(recording(k % 10, k // 10)[1])) as w:
            assert w.getframerate() == RATE and w.getsampwidth() == 2
            words = np.frombuffer(w.readframes(w.getnframes()), np.int16)[:slot]
        start = k * slot + (slot - len(words)) // 2
        out[start : start + len(words)] = words
    return wav_bytes(out)


def digit_png(index: int) -> bytes:
    images, _ = digit_images()
    buffer = io.BytesIO()
    Image.fromarray(upscale(images[index], 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def moving_clip(tmp: Path, *directions: str) -> bytes:
    """An mp4 of a digit gliding in each of `directions` in turn, one training-length clip each."""
    images, _ = digit_images()
    sprite = np.asarray(Image.fromarray(images[7]).resize((SPRITE_SIZE, SPRITE_SIZE), Image.BILINEAR))
    path = tmp / f"{'-'.join(directions)}.mp4"
    frames = np.concatenate([moving_digit(sprite, d, (4, 9)) for d in directions])  # (T, S, S, 3)
    write_mp4(path, frames, VIDEO_FPS)
    return path.read_bytes()


# ---- the browser -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from run_server(MODELS)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server: Server):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    yield page
    page.close()
    assert not errors, f"the page's script failed: {errors}"


def drop(page, files: list[tuple[str, bytes, str]]) -> None:
    """Drop `files` (name, bytes, type) on the drop zone, as a drag from the desktop does, and wait until
    the page has read them all."""
    payload = [{"name": n, "data": base64.b64encode(d).decode(), "type": t} for n, d, t in files]
    page.evaluate(
        """files => {
          const transfer = new DataTransfer();
          for (const f of files) {
            const bytes = Uint8Array.from(atob(f.data), c => c.charCodeAt(0));
            transfer.items.add(new File([bytes], f.name, { type: f.type }));
          }
          delete document.body.dataset.done;
          document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }""",
        payload,
    )
    page.wait_for_function("document.body.dataset.done !== undefined", timeout=60_000)


def colours(page, selector: str) -> list[int]:
    """How many distinct colours each canvas matching `selector` holds."""
    return page.eval_on_selector_all(
        selector,
        """canvases => canvases.map(c => {
          const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data, seen = new Set();
          for (let i = 0; i < d.length; i += 4) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
          return seen.size;
        })""",
    )


def screenshot(page, name: str, selector: str = "article.card") -> None:
    """With BRIDLE_PAGE_SCREENSHOTS=DIR: DIR/page-NAME.png of the first `selector`, in 256 colours."""
    folder = os.environ.get("BRIDLE_PAGE_SCREENSHOTS")
    if not folder:
        return
    page.wait_for_function("[...document.querySelectorAll('audio, video')].every(m => m.readyState >= 1)")
    shot = page.locator(selector).first.screenshot(scale="css")
    image = Image.open(io.BytesIO(shot)).convert("RGB").quantize(256)
    image.save(Path(folder) / f"page-{name}.png", optimize=True)


def card_text(page) -> str:
    return page.locator("article.card").first.inner_text()


# ---- the tests -------------------------------------------------------------------------------------


def test_the_page_is_self_contained_and_small(server: Server) -> None:
    html = server.client.get("/").text
    assert len(html.encode()) < PAGE_BYTES
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html and "<script src" not in html and "<link" not in html


def test_a_recording_shows_its_log_mel_codes_and_labels(page) -> None:
    drop(page, [recording(7, 3)])
    assert page.locator("article audio").count() == 1
    inputs, codes = colours(page, "article canvas.input"), colours(page, "article canvas.codes")
    assert len(inputs) == 1 and inputs[0] > 50, inputs  # a colour ramp over the log-mel values
    assert len(codes) == 1 and codes[0] > 8, codes
    labels = page.locator("article ol.bars li").all_inner_texts()
    assert len(labels) == 5 and labels[0].startswith("seven"), labels
    assert "log-mel fbank as the encoder read it: 1 window(s) of 128 frames by 64 mel bins" in card_text(page)
    assert page.locator("article svg.timeline").count() == 0  # one window: no timeline
    screenshot(page, "audio")


def test_the_level_selector_and_hover_show_the_codes(page, server: Server) -> None:
    name, data, ctype = recording(3, 10, "george")
    drop(page, [(name, data, ctype)])
    codes = server.client.post("/tokenize", files={"file": ("a.wav", data, "audio/wav")}).json()
    first = codes["results"][0]["windows"][0]["codes"][0]  # patch 0: one code per level
    canvas = page.locator("article canvas.codes")
    before = canvas.evaluate("c => c.toDataURL()")
    page.locator("article select").select_option("2")
    assert canvas.evaluate("c => c.toDataURL()") != before  # level 3 is drawn in other colours
    box = canvas.bounding_box()
    canvas.hover(position={"x": 5, "y": box["height"] - 5})  # patch 0: time 0, lowest mel band
    tip = page.locator("article .tip")
    assert tip.is_visible()
    assert tip.inner_text() == f"window 1, patch 0: codes {' '.join(map(str, first))} (levels 1..4)"
    canvas.focus()  # the keyboard reads the same
    page.keyboard.press("ArrowRight")
    assert "window 1, patch 1: codes" in page.locator("article p[aria-live]").inner_text()


def test_an_image_and_a_video_are_drawn_as_the_model_saw_them(page, tmp_path: Path) -> None:
    drop(page, [("digit.png", digit_png(IMAGE), "image/png")])
    assert colours(page, "article canvas.input")[0] > 2
    assert "resized and cropped to 32 by 32 pixels, 8 by 8 patches" in card_text(page)
    labels = page.locator("article ol.bars li").all_inner_texts()
    assert len(labels) == 5 and labels[0].startswith(DIGIT_WORDS[digit_images()[1][IMAGE]]), labels
    screenshot(page, "image")

    drop(page, [("right.mp4", moving_clip(tmp_path, "right"), "video/mp4")])
    assert page.locator("article video").count() == 1
    frames, codes = colours(page, "article canvas.input")[0], colours(page, "article canvas.codes")[0]
    assert frames > 2 and codes > 8, (frames, codes)
    assert "frames of 32 by 32 pixels each" in card_text(page)
    assert page.locator("article ol.bars li").first.inner_text().startswith("right")


def test_a_long_recording_gets_a_timeline_of_its_windows(page) -> None:
    drop(page, [("digits-30s.wav", long_recording(), "audio/wav")])
    timeline = page.locator("article svg.timeline")
    assert timeline.count() == 1
    rows = timeline.locator("text").all_text_contents()
    heard = {r for r in rows if not r.endswith("s")}  # row names, not the time axis
    assert len(heard) >= 5, rows  # ten digits are spoken in turn: the top label changes along the way
    windows = math.ceil(30.0 / read_manifest(MODELS[0]).input.window_seconds)  # the last one partly
    assert timeline.locator("rect").count() == len(heard) * windows  # a cell per row and window
    assert f"log-mel fbank as the encoder read it: {windows} window(s)" in card_text(page)
    assert colours(page, "article canvas.input")[0] > 50
    screenshot(page, "timeline")


def test_a_long_video_gets_a_strip_per_clip_and_a_timeline(page, tmp_path: Path) -> None:
    drop(page, [("right-then-up.mp4", moving_clip(tmp_path, "right", "up"), "video/mp4")])
    assert "the frames as the model saw them: 2 clip(s) in rows" in card_text(page)
    timeline = page.locator("article svg.timeline")
    assert timeline.count() == 1
    titles = timeline.locator("title").all_text_contents()  # "start-end s: label score" per cell
    top = {}
    for title in titles:
        span, label, score = title.rsplit(" ", 2)
        if float(score) > top.get(span, ("", 0.0))[1]:
            top[span] = (label, float(score))
    assert [top[span][0] for span in sorted(top)] == ["right", "up"]
    screenshot(page, "video")


def test_several_files_get_a_similarity_matrix_and_a_map(page) -> None:
    drop(
        page,
        [recording(0, 1, "george"), recording(0, 2), recording(5, 3, "nicolas"), recording(5, 4, "yweweler")],
    )
    matrix = page.locator("#compare svg.matrix")
    assert matrix.count() == 1 and matrix.locator("rect").count() == 16
    values = [float(t) for t in matrix.locator("text.v").all_text_contents()]
    assert len(values) == 16 and all(-1 <= v <= 1.0001 for v in values)
    assert [values[i * 5] for i in range(4)] == [1.0] * 4  # each file is itself
    assert values[1] > values[2] and values[11] > values[9]  # a "zero" is nearer a "zero" than a "five"
    assert len({round(v, 2) for v in values}) > 2
    assert page.locator("#compare svg.pca circle").count() == 4
    screenshot(page, "compare", "#compare section")


def test_a_broken_file_shows_the_services_error(page, server: Server) -> None:
    broken = b"RIFF\x00\x00\x00\x00WAVEjunk" * 8
    drop(page, [("broken.wav", broken, "audio/wav")])
    direct = server.client.post("/embed", files={"file": ("broken.wav", broken, "audio/wav")})
    error = direct.json()["error"]
    assert direct.status_code in (400, 415, 422), direct.text
    alert = page.locator("article [role=alert]")
    assert alert.count() == 1
    assert alert.inner_text() == f"HTTP {direct.status_code} {error['code']}: {error['message']}"
    assert "done: 0 of 1 file(s) read" in page.locator("#status").inner_text()


def test_each_request_can_be_copied_as_curl(page, server: Server) -> None:
    name, data, ctype = recording(4, 2)
    drop(page, [(name, data, ctype)])
    page.locator("article details summary", has_text="requests").click()
    buttons = page.locator("article .requests button")
    assert buttons.count() == 4  # /embed, /tokenize, /features, /classify
    embed = page.locator("article .requests li", has_text="POST /embed")
    embed.locator("button").click()
    command = embed.locator("pre").inner_text()
    assert command == f"curl -X POST '{server.url}/embed' -F 'file=@{name}'"


def test_the_keyboard_reaches_the_file_chooser(page, tmp_path: Path) -> None:
    """Tab from the top: the /docs link, the API key, the model selector, then the button that opens the
    file chooser."""
    choosers: list = []
    page.on(
        "filechooser", lambda chooser: choosers.append(chooser)
    )  # intercepted from here on, before any key is pressed
    for _ in range(4):
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "choose"
    path = tmp_path / "digit.png"
    path.write_bytes(digit_png(IMAGE))
    with page.expect_file_chooser() as opened:  # waits for the event (a round trip was too short under load)
        page.keyboard.press("Enter")
    assert len(choosers) == 1  # the Enter opened it, and no Tab before did
    opened.value.set_files(str(path))
    page.wait_for_function("document.body.dataset.done !== undefined", timeout=60_000)
    assert "model image-digits (image)" in card_text(page)


# ---- the real-data models (models/audio-urban, models/image-cifar10) -------------------------------------

URBAN = REPO.parent / "shared" / "data" / "urbansound8k"
REAL_MODELS = [REPO / "models" / m for m in ("audio-digits", "audio-urban", "image-cifar10")]
URBAN_CLASSES = {
    "air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
    "engine_idling", "gun_shot", "jackhammer", "siren", "street_music",
}  # fmt: skip
CIFAR10_CLASSES = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}


@pytest.fixture(scope="module")
def real_page(browser) -> Iterator:
    if not all((m / "manifest.json").is_file() for m in REAL_MODELS):
        pytest.skip("the real-data models are not in models/")
    for server in run_server(REAL_MODELS):
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('model').options.length > 3")
        yield page
        page.close()


def urban_street(seconds_each: float = 3.0) -> bytes:
    """A 16 kHz wav of UrbanSound8K clips in turn (a siren, a dog, a drill, a jackhammer, street music),
    `seconds_each` of each."""
    from bridle.model.decoding import decode_audio

    picks = ["siren", "dog_bark", "drilling", "jackhammer", "street_music"]
    parts = []
    for label in picks:
        clip = sorted((URBAN / "fold1" / label).glob("*.flac"))[3]
        wave_ = decode_audio(clip, 16000)[: int(seconds_each * 16000)]
        parts.append(np.pad(wave_, (0, int(seconds_each * 16000) - len(wave_))))
    return encode_audio(np.concatenate(parts), "wav", 16000)


@pytest.mark.skipif(not URBAN.is_dir(), reason="UrbanSound8K (../shared/data/urbansound8k)")
def test_an_urban_recording_gets_a_timeline_of_urban_sounds(real_page) -> None:
    real_page.locator("#model").select_option("audio-urban")
    drop(real_page, [("street.wav", urban_street(), "audio/wav")])
    assert "model audio-urban (audio)" in card_text(real_page)
    rows = real_page.locator("article svg.timeline text").all_text_contents()
    heard = {r for r in rows if not r.endswith("s")}
    assert heard and heard <= URBAN_CLASSES, rows
    labels = real_page.locator("article ol.bars li").all_inner_texts()
    assert labels and labels[0].split()[0] in URBAN_CLASSES, labels
    screenshot(real_page, "urban-timeline")


def test_a_photo_gets_the_cifar10_labels(real_page) -> None:
    real_page.locator("#model").select_option("image-cifar10")
    photo = (REPO / "docs" / "media" / "chelsea.jpg").read_bytes()  # CC0, scikit-image's "chelsea"
    drop(real_page, [("chelsea.jpg", photo, "image/jpeg")])
    assert "model image-cifar10 (image)" in card_text(real_page)
    labels = real_page.locator("article ol.bars li").all_inner_texts()
    assert len(labels) == 5 and {label.split()[0] for label in labels} <= CIFAR10_CLASSES, labels
    screenshot(real_page, "cifar10")
