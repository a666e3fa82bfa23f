"""Models swapped while serving: versioned model folders (`NAME/VERSION/`), `model=NAME` (the newest) and
`model=NAME@VERSION`, `/models` and `/v1/models` listing them, and reloads (`POST /admin/reload`, SIGHUP)
that add, change and remove versions under real servers: requests in flight finish on the old load, new
ones take the new, a version that cannot load leaves the service serving, and with two front-end
processes both switch together under 16 clients with no request failing."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from conftest import API_KEY, Server, run_server
from model_dirs import LABELS, export_one

from bench.reload_load import reload_under_load
from bench.serve import running_service
from bridle.runtime.errors import ModelLoadError
from bridle.runtime.models import find_model_dirs, find_models, load_model
from bridle.runtime.sessions import CPU, ProviderChooser
from bridle.runtime.versions import default_model, newest, resolve, version_order

NAME = "micro-audio"
KEY = {"X-API-Key": API_KEY}


# ---- versions, without a server ---------------------------------------------------------------------


class Load:
    def __init__(self, name: str, version: str | None, modality: str = "audio") -> None:
        self.name, self.version = name, version
        self.manifest = SimpleNamespace(modality=modality)


def test_versions_sort_naturally_and_a_name_takes_the_newest() -> None:
    assert sorted(["10", "9", "1.10", "1.9", "2"], key=version_order) == ["1.9", "1.10", "2", "9", "10"]
    served = {k: Load(*k.split("@")) for k in ("a@2", "a@10", "a@9")} | {"b": Load("b", None)}
    assert resolve(served, "a") is served["a@10"]
    assert resolve(served, "a@9") is served["a@9"]
    assert resolve(served, "a@3") is None and resolve(served, "c") is None
    assert resolve(served, "b") is served["b"] and resolve(served, "b@1") is None
    assert {n: m.version for n, m in newest(served).items()} == {"a": "10", "b": None}


def test_an_upload_naming_no_model_goes_to_the_first_of_its_modality_newest_version() -> None:
    served = {"a@2": Load("a", "2"), "a@10": Load("a", "10"), "b": Load("b", None, "image")}
    served |= {"c": Load("c", None, "image")}
    assert default_model(served, "audio") is served["a@10"]
    assert default_model(served, "image") is served["b"]
    assert default_model(served, "video") is None


def test_a_folder_holds_flat_models_and_versions(model_root: Path, tmp_path: Path) -> None:
    shutil.copytree(model_root / "image", tmp_path / "micro-image")  # flat, as models/ is today
    for version in ("1", "2"):
        shutil.copytree(model_root / "audio", tmp_path / NAME / version)
    shutil.copytree(model_root / "audio", tmp_path / NAME / ".3.tmp")  # being written: not yet a version
    assert find_models([tmp_path]) == [
        (tmp_path / NAME / "1", "1"),
        (tmp_path / NAME / "2", "2"),
        (tmp_path / "micro-image", None),
    ]
    # the flat layout reads as before
    assert find_model_dirs([model_root]) == [model_root / d for d in ("audio", "image", "video")]
    assert find_models([model_root / "audio"]) == [(model_root / "audio", None)]
    # a version's manifest must carry its folder's name
    shutil.copytree(model_root / "audio", tmp_path / "other" / "1")
    with pytest.raises(ModelLoadError, match="a version of 'other' has the manifest name 'micro-audio'"):
        load_model(tmp_path / "other" / "1", ProviderChooser([CPU]), version="1")
    (tmp_path / "bad").mkdir()
    shutil.copytree(model_root / "audio", tmp_path / "bad" / "1@2")
    with pytest.raises(ModelLoadError, match="may not hold '@'"):
        find_models([tmp_path])


# ---- one process ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_audio(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """micro-audio exported again with another seed: other weights, other embeddings."""
    return export_one(tmp_path_factory.mktemp("second") / NAME, "audio", NAME, LABELS, seed=7)


@pytest.fixture
def versions(model_root: Path, tmp_path: Path) -> Path:
    """A models folder: micro-audio version 1 and the flat micro-image."""
    shutil.copytree(model_root / "audio", tmp_path / NAME / "1")
    shutil.copytree(model_root / "image", tmp_path / "micro-image")
    return tmp_path


def embed(server: Server, data: bytes, model: str) -> httpx.Response:
    return server.client.post("/embed", params={"model": model}, files={"file": ("a.wav", data, "audio/wav")})


def served(r: httpx.Response) -> tuple[str, np.ndarray]:
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    return result["model"], np.array(result["embedding"])


def add_version(root: Path, source: Path, version: str) -> Path:
    """A version appears whole: copied beside, then renamed into place."""
    tmp = root / NAME / f".{version}.tmp"
    shutil.copytree(source, tmp)
    return tmp.rename(root / NAME / version)


def test_versions_are_served_listed_and_reloaded(
    versions: Path, model_root: Path, second_audio: Path, media_files
) -> None:
    wav = media_files["wav"][0]
    for server in run_server([versions], api_key=API_KEY):
        server.client.headers.update(KEY)
        first = served(embed(server, wav, NAME))
        assert first[0] == f"{NAME}@1"
        # a new version: newest for model=NAME, the old one still there by its version
        add_version(versions, second_audio, "2")
        r = server.client.post("/admin/reload")
        assert r.status_code == 200, r.text
        assert r.json() == {
            "models": [f"{NAME}@1", f"{NAME}@2", "micro-image"],
            "loaded": [f"{NAME}@2"],
            "unloaded": [],
        }
        name, vector = served(embed(server, wav, NAME))
        assert name == f"{NAME}@2" and not np.allclose(vector, first[1], atol=1e-4)  # other weights
        old = served(embed(server, wav, f"{NAME}@1"))
        assert old[0] == f"{NAME}@1" and np.allclose(old[1], first[1], atol=1e-6)
        models = {m["name"]: m for m in server.client.get("/models").json()["models"]}
        assert {k: (m.get("version"), m.get("newest")) for k, m in models.items()} == {
            f"{NAME}@1": ("1", False),
            f"{NAME}@2": ("2", True),
            "micro-image": (None, None),  # a flat model's entry is as before
        }
        ids = [m["id"] for m in server.client.get("/v1/models").json()["data"]]
        assert sorted(ids) == sorted([f"{NAME}@1", f"{NAME}@2", "micro-image", NAME])
        # nothing changed: nothing loaded
        assert server.client.post("/admin/reload").json()["loaded"] == []
        # a version whose graph is damaged: refused, named, and the service serves on
        broken = add_version(versions, model_root / "audio", "3")
        (broken / "encoder.onnx").write_bytes(b"not a graph")
        r = server.client.post("/admin/reload")
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert error["code"] == "reload_failed"
        assert str(broken) in error["message"] and "sha256 mismatch for 'encoder.onnx'" in error["message"]
        assert f"still serving {NAME}@1, {NAME}@2, micro-image" in error["message"]
        assert served(embed(server, wav, NAME))[0] == f"{NAME}@2"
        shutil.rmtree(broken)
        # a version changed in place (version 1 gets version 2's graphs): loaded again
        for f in (versions / NAME / "1").iterdir():
            shutil.copy2(second_audio / f.name, f)
        r = server.client.post("/admin/reload")
        assert r.json()["loaded"] == [f"{NAME}@1"], r.text
        assert np.allclose(served(embed(server, wav, f"{NAME}@1"))[1], vector, atol=1e-6)
        # a version removed
        shutil.rmtree(versions / NAME / "2")
        r = server.client.post("/admin/reload")
        assert r.json() == {"models": [f"{NAME}@1", "micro-image"], "loaded": [], "unloaded": [f"{NAME}@2"]}
        assert served(embed(server, wav, NAME))[0] == f"{NAME}@1"
        r = embed(server, wav, f"{NAME}@2")
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model"
        # behind the API key
        assert httpx.post(f"{server.url}/admin/reload").status_code == 401


def test_requests_in_flight_finish_on_the_old_version(
    versions: Path, second_audio: Path, media_files
) -> None:
    """A request waits in version 1's batcher (a batch of 4 fills for 4 s) while version 2 comes in and
    version 1 goes: it is answered by version 1; a request sent after the reload by version 2."""
    wav = media_files["wav"][0]
    for server in run_server([versions], max_batch_size=4, max_wait_ms=4000, timeout=60):
        answers: list[httpx.Response] = []
        waiting = threading.Thread(target=lambda s=server, a=answers: a.append(embed(s, wav, NAME)))
        waiting.start()
        queued = f'bridle_queue_depth{{graph="encoder",model="{NAME}@1"}} 1.0'
        deadline = time.monotonic() + 20
        while queued not in server.client.get("/metrics").text:  # until it waits in version 1's queue
            assert time.monotonic() < deadline, "the request did not reach version 1's queue"
            time.sleep(0.05)
        add_version(versions, second_audio, "2")
        shutil.rmtree(versions / NAME / "1")
        r = server.client.post("/admin/reload")
        assert r.json() == {
            "models": [f"{NAME}@2", "micro-image"],
            "loaded": [f"{NAME}@2"],
            "unloaded": [f"{NAME}@1"],
        }
        after = embed(server, wav, NAME)
        waiting.join(30)
        assert served(answers[0])[0] == f"{NAME}@1"  # finished on the old load
        assert served(after)[0] == f"{NAME}@2"


# ---- bridle-serve with two front-end processes ---------------------------------------------------


@pytest.mark.slow
def test_a_reload_under_16_clients_through_two_front_ends_fails_no_request(model_root: Path) -> None:
    """bench.reload_load: versions 2 and 3 added (by POST /admin/reload, then SIGHUP), version 1 removed,
    a damaged version refused, under 16 closed-loop clients on model=NAME: every request 200, each version
    served, and no request sent after a reload had answered reached an older version (both front ends
    had switched)."""
    result = reload_under_load(model_root / "audio", frontends=2, clients=16, cycles=3, settle_s=1.5)
    assert result["problems"] == [], result
    assert set(result["statuses"]) == {200}, result  # type: ignore[arg-type]
    assert set(result["served_by"]) == {f"{NAME}@{v}" for v in (1, 2, 3, 4)}, result  # type: ignore[arg-type]
    assert result["stale_after_reload_answer"] == 0, result
    broken = result["reloads"][-1]  # type: ignore[index]
    assert broken["status"] == 409 and "sha256 mismatch" in broken["message"], result


@pytest.fixture
def keyed_process(versions: Path) -> Iterator[tuple[str, subprocess.Popen, list[str]]]:
    env = {"BRIDLE_FRONTENDS": "2", "BRIDLE_PROVIDERS": CPU, "BRIDLE_API_KEY": API_KEY}
    log: list[str] = []
    with running_service([versions], {**env, "BRIDLE_ENGINE_SPARE": "true"}, log=log) as service:
        yield service.url, service.process, log


def wait_for(log: list[str], text: str, count: int = 1, within: float = 90) -> None:
    deadline = time.monotonic() + within
    while sum(text in line for line in list(log)) < count:
        assert time.monotonic() < deadline, f"no {count} x {text!r} in {within} s:\n{''.join(log)}"
        time.sleep(0.1)


@pytest.mark.slow
def test_sighup_reloads_the_engine_and_the_spare(
    keyed_process, versions: Path, second_audio: Path, media_files
) -> None:
    """SIGHUP reaches the engine (both front ends then take version 2) and the waiting spare: once the
    engine is killed, the spare that took over serves version 2 too."""
    url, process, log = keyed_process
    wav = media_files["wav"][0]

    def who(model: str = NAME) -> set[str]:  # new connections: the kernel spreads them over both front ends
        seen = set()
        for _ in range(12):
            with contextlib.suppress(httpx.TransportError):
                r = httpx.post(
                    f"{url}/embed",
                    params={"model": model},
                    files={"file": ("a.wav", wav, "audio/wav")},
                    headers=KEY,
                    timeout=60,
                )
                seen.add(r.json()["results"][0]["model"] if r.status_code == 200 else str(r.status_code))
        return seen

    wait_for(log, "engine spare ready")
    assert who() == {f"{NAME}@1"}
    add_version(versions, second_audio, "2")
    process.send_signal(signal.SIGHUP)
    wait_for(log, "bridle.engine: reload: serving", count=2)  # the engine and the spare
    assert who() == {f"{NAME}@2"}
    assert who(f"{NAME}@1") == {f"{NAME}@1"}
    engine = [int(m.group(1)) for line in log if (m := re.search(r"engine started \(pid (\d+)\)", line))]
    os.kill(engine[-1], signal.SIGKILL)
    wait_for(log, "the spare taking over")
    deadline = time.monotonic() + 60
    while (seen := who()) != {f"{NAME}@2"}:
        assert time.monotonic() < deadline, f"after the takeover: {seen}"
        time.sleep(0.2)
    models = httpx.get(f"{url}/models", headers=KEY).json()["models"]
    assert sorted(m["name"] for m in models) == [f"{NAME}@1", f"{NAME}@2", "micro-image"]
