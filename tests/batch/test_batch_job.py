"""The batch job end to end on a local Ray (one per module, 2 CPUs) against the bundled models: its tables
(windows, and each file's clip result) equal what the real HTTP service returns for the same files,
unusable files land in the errors table, and a job killed mid-run resumes without losing or duplicating
anything."""

from __future__ import annotations

import mimetypes
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from bench.service_load import serve
from bridle.batch.job import run_job
from bridle.batch.settings import JobSettings
from bridle.batch.store import OutputStore
from bridle.data.media_files import make_audio

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_address() -> str:
    context = ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=300 << 20
    )
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def mixed_output(ray_address: str, mixed_dataset, bundled_models: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "dataset"
    settings = JobSettings(
        input=str(mixed_dataset.root),
        model_dirs=(str(bundled_models),),
        output=str(out),
        shard_files=4,
        actors=2,
    )
    return settings, run_job(settings)


@pytest.fixture(scope="module")
def service_url(bundled_models: Path):
    with serve(bundled_models, {"BRIDLE_INTRA_OP_THREADS": "1"}) as url:
        yield url


def _windows(out: Path, table: str = "windows") -> dict[str, dict[str, list]]:
    """The windows (or clips) tables of every model, by model name, as Python lists per column."""
    return {d.name: pq.read_table(d).to_pydict() for d in sorted((out / table).iterdir())}


def test_every_file_is_a_window_row_or_an_error(mixed_output, mixed_dataset) -> None:
    settings, summary = mixed_output
    out = Path(settings.output)
    tables = _windows(out)
    assert sorted(tables) == ["audio-digits", "image-digits", "video-motion"]
    windows = {
        (Path(p).relative_to(mixed_dataset.root).as_posix(), w)
        for t in tables.values()
        for p, w in zip(t["path"], t["window"], strict=True)
    }
    assert windows == {
        ("audio/speech.wav", 0), ("audio/speech.wav", 1), ("audio/speech.wav", 2),
        ("audio/tone.flac", 0), ("audio/noise.mp3", 0), ("audio/noise.mp3", 1),
        ("images/digit.png", 0), ("images/photo.jpeg", 0), ("clip.mp4", 0), ("clip.mp4", 1),
    }  # fmt: skip
    errors = pq.read_table(out / "errors").to_pydict()
    assert {
        Path(p).relative_to(mixed_dataset.root).as_posix(): c
        for p, c in zip(errors["path"], errors["code"], strict=True)
    } == mixed_dataset.broken
    assert all(errors["message"])
    assert (summary.files, summary.shards, summary.shards_skipped) == (9, 3, 0)
    assert (summary.windows, summary.errors, summary.windows_this_run) == (10, 3, 10)
    audio = pq.read_table(out / "windows" / "audio-digits")
    assert audio.schema.field("codes").type.value_type.value_type == "uint8"  # 128 codes per level


def test_outputs_equal_the_http_service(mixed_output, service_url: str) -> None:
    import httpx

    settings, _ = mixed_output
    tables = _windows(Path(settings.output))
    clips = _windows(Path(settings.output), "clips")
    rows = {
        (path, w): (model, i)
        for model, t in tables.items()
        for i, (path, w) in enumerate(zip(t["path"], t["window"], strict=True))
    }
    files = sorted({path for path, _ in rows})
    assert len(files) == 6
    with httpx.Client(base_url=service_url, timeout=60) as client:
        for path in files:
            upload = {"file": (Path(path).name, Path(path).read_bytes(), mimetypes.guess_type(path)[0])}
            embed = client.post("/embed", files=upload).raise_for_status().json()["results"][0]
            codes = client.post("/tokenize", files=upload).raise_for_status().json()["results"][0]
            labels = client.post("/classify", files=upload).raise_for_status().json()["results"][0]
            assert len(embed["windows"]) == sum(1 for p, _ in rows if p == path)
            for w, window in enumerate(embed["windows"]):
                model, i = rows[(path, w)]
                t = tables[model]
                assert model == embed["model"]
                assert (t["start"][i], t["end"][i], t["duration"][i]) == (
                    window["start"],
                    window["end"],
                    embed["duration"],
                )
                np.testing.assert_allclose(t["embedding"][i], window["embedding"], rtol=0, atol=1e-5)
                service_codes = np.array(codes["windows"][w]["codes"])  # (N, L)
                np.testing.assert_array_equal(np.array(t["codes"][i]), service_codes.T)  # (L, N)
                top = labels["windows"][w]["labels"]
                assert t["labels"][i] == [x["label"] for x in top]
                np.testing.assert_allclose(t["scores"][i], [x["score"] for x in top], rtol=0, atol=1e-5)
            (i,) = [i for i, p in enumerate(clips[embed["model"]]["path"]) if p == path]  # one row per file
            clip = {k: v[i] for k, v in clips[embed["model"]].items()}
            assert (clip["windows"], clip["duration"]) == (len(embed["windows"]), embed["duration"])
            np.testing.assert_allclose(clip["embedding"], embed["embedding"], rtol=0, atol=1e-5)
            assert clip["labels"] == [x["label"] for x in labels["labels"]]
            np.testing.assert_allclose(
                clip["scores"], [x["score"] for x in labels["labels"]], rtol=0, atol=1e-5
            )


def test_unusable_files_fail_the_same_way_in_the_service(mixed_output, service_url: str):
    import httpx

    settings, _ = mixed_output
    errors = pq.read_table(Path(settings.output) / "errors").to_pydict()
    for path, code in zip(errors["path"], errors["code"], strict=True):
        upload = {"file": (Path(path).name, Path(path).read_bytes(), mimetypes.guess_type(path)[0])}
        response = httpx.post(f"{service_url}/embed", files=upload, timeout=60)
        assert 400 <= response.status_code < 500
        assert response.json()["error"]["code"] == code


def test_a_rerun_skips_everything(mixed_output) -> None:
    settings, _ = mixed_output
    before = {p: p.stat().st_mtime_ns for p in Path(settings.output).rglob("*.parquet")}
    summary = run_job(settings)
    assert (summary.shards_skipped, summary.windows, summary.windows_this_run, summary.plan) == (
        3,
        10,
        0,
        None,
    )
    assert {p: p.stat().st_mtime_ns for p in Path(settings.output).rglob("*.parquet")} == before


def test_resume_after_a_kill(ray_address: str, bundled_models: Path, tmp_path: Path) -> None:
    """Kill a real `bridle-batch` process (joined to this module's Ray) after its first shard, re-run:
    the shards done before are kept as they were, the rest are done once."""
    files = 40
    data = tmp_path / "data"
    for i in range(files):
        make_audio(data / f"clip-{i:02d}.wav", 0.5, hz=200.0 + 20 * i)
    out = tmp_path / "out"
    model = bundled_models / "audio-digits"
    cmd = [sys.executable, "-m", "bridle.batch.cli", str(data), "--output", str(out), "--model-dir",
           str(model), "--shard-files", "1", "--actors", "1", "--address", ray_address]  # fmt: skip
    store = OutputStore(str(out))
    job = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not store.done_shards():
            assert job.poll() is None, f"the job ended early: {job.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no shard was done in 120 s"
            time.sleep(0.01)
        job.send_signal(signal.SIGKILL)
        job.wait(30)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    time.sleep(1.0)  # Ray stops the dead driver's actor; a shard it was writing may still land
    done_before = store.done_shards()
    assert 0 < len(done_before) < files, "the kill did not land mid-job"
    # only the shards marked done: a dying actor can leave a part written but unmarked, which is redone
    kept = {(p := Path(store.windows_path("audio-digits", s))): p.stat().st_mtime_ns for s in done_before}

    summary = run_job(
        JobSettings(
            input=str(data),
            model_dirs=(str(model),),
            output=str(out),
            shard_files=1,
            actors=1,
        )
    )
    assert summary.shards_skipped >= len(done_before)
    assert summary.shards_skipped + summary.windows_this_run == files  # one window per file
    assert store.done_shards() == set(range(files))
    table = pq.read_table(out / "windows" / "audio-digits").to_pydict()
    assert sorted(zip(table["path"], table["window"], strict=True)) == [
        (str(data / f"clip-{i:02d}.wav"), 0) for i in range(files)
    ]
    for path, mtime in kept.items():
        assert path.stat().st_mtime_ns == mtime, f"{path.name} was done before the kill and rewritten"
