"""The parts of a batch job that need no Ray: listing inputs (folders, manifests, fsspec URLs), shards,
the output store, one shard through real ONNX Runtime sessions to an fsspec filesystem, actor sizing,
and the CLI's refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest

from bridle.batch.cli import main
from bridle.batch.inputs import InputError, list_files, shard
from bridle.batch.job import plan_actors
from bridle.batch.settings import DEFAULT_LIMITS, JobSettings, SettingsError
from bridle.batch.store import JobMismatch, OutputStore
from bridle.batch.tables import codes_dtype
from bridle.batch.worker import ShardProcessor
from bridle.data.media_files import make_audio, make_image
from bridle.runtime.models import load_model
from bridle.runtime.sessions import CUDA, CpuThreads, ProviderChooser

REPO = Path(__file__).resolve().parents[2]


def test_a_folder_lists_every_file_sorted_without_hidden_ones(mixed_dataset) -> None:
    files = list_files(str(mixed_dataset.root))
    assert [Path(f).relative_to(mixed_dataset.root).as_posix() for f in files] == [
        "audio/noise.mp3", "audio/speech.wav", "audio/tone.flac", "broken.wav", "clip.mp4",
        "images/digit.png", "images/empty.png", "images/photo.jpeg", "notes.txt",
    ]  # fmt: skip
    assert list_files(f"file://{mixed_dataset.root}") == files


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifests_resolve_relative_paths(tmp_path: Path, suffix: str) -> None:
    """Relative paths are relative to the manifest's folder; the row order is kept."""
    lists = tmp_path / "lists"
    make_audio(lists / "data" / "a.wav", 0.1)
    absolute = tmp_path / "b.png"
    absolute.write_bytes(make_image("png"))
    table = pa.table({"path": [str(absolute), "data/a.wav"], "label": ["x", "y"]})
    manifest = lists / f"m{suffix}"
    if suffix == ".csv":
        pa.csv.write_csv(table, manifest)
    elif suffix == ".jsonl":
        manifest.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    else:
        pq.write_table(table, manifest)
    assert list_files(str(manifest)) == [str(absolute), str(lists / "data" / "a.wav")]


def test_inputs_at_an_fsspec_url() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe({"/h5in/set/b.wav": b"b", "/h5in/set/sub/a.wav": b"a", "/h5in/set/.hidden/c.wav": b"c"})
    fs.pipe("/h5in/list.jsonl", b'{"path": "set/b.wav"}\n{"path": "memory://elsewhere/x.wav"}\n')
    try:
        assert list_files("memory://h5in/set") == ["memory:///h5in/set/b.wav", "memory:///h5in/set/sub/a.wav"]
        assert list_files("memory://h5in/list.jsonl") == [
            "memory:///h5in/set/b.wav",
            "memory://elsewhere/x.wav",
        ]
    finally:
        fs.rm("/h5in", recursive=True)


def test_bad_inputs_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        list_files(str(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="Protocol not known: nosuchfs"):
        list_files("nosuchfs://bucket/data")
    with pytest.raises(InputError, match="Protocol not known: nosuchfs"):
        OutputStore("nosuchfs://bucket/out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no files"):
        list_files(str(tmp_path / "empty"))
    (tmp_path / "list.txt").write_text("a.wav\n")
    with pytest.raises(InputError, match="neither a folder nor a manifest"):
        list_files(str(tmp_path / "list.txt"))
    (tmp_path / "m.csv").write_text("file\na.wav\n")
    with pytest.raises(InputError, match="no 'path' column"):
        list_files(str(tmp_path / "m.csv"))
    (tmp_path / "twice.csv").write_text("path\na.wav\nb.wav\na.wav\n")
    with pytest.raises(InputError, match=r"lists 'a.wav' twice \(rows 1 and 3\)"):
        list_files(str(tmp_path / "twice.csv"))
    (tmp_path / "hole.jsonl").write_text('{"path": "a.wav"}\n{"path": ""}\n')
    with pytest.raises(InputError, match="row 2 has no path"):
        list_files(str(tmp_path / "hole.jsonl"))


def test_shards_are_consecutive_groups() -> None:
    assert shard(list("abcde"), 2) == [["a", "b"], ["c", "d"], ["e"]]


def test_codes_take_the_smallest_unsigned_type() -> None:
    assert [codes_dtype(k).__name__ for k in (128, 256, 257, 65536, 65537)] == [
        "uint8", "uint8", "uint16", "uint16", "uint32",
    ]  # fmt: skip


def test_the_store_refuses_another_jobs_output(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    store.claim({"digest": "a", "shard_files": 4})
    store.claim({"digest": "a", "shard_files": 4})  # the same job again
    with pytest.raises(JobMismatch, match="differs in digest, shard_files"):
        store.claim({"digest": "b", "shard_files": 8})


def test_a_shard_through_onnx_runtime_to_an_fsspec_filesystem(bundled_models: Path) -> None:
    """Input and output on fsspec's memory filesystem: written under a temporary name, then moved."""
    fs = fsspec.filesystem("memory")
    fs.pipe(
        {
            "/h5shard/in/a.wav": make_audio("wav", 2.0),
            "/h5shard/in/b.png": make_image("png"),
            "/h5shard/in/c.wav": b"RIFF",
        }
    )
    chooser = ProviderChooser(["CPUExecutionProvider"])
    models = {
        name: load_model(bundled_models / name, chooser, CpuThreads(intra_op=1))
        for name in ("audio-digits", "image-digits")
    }
    try:
        processor = ShardProcessor(models, "memory://h5shard/out", DEFAULT_LIMITS, batch_size=1, top_k=2)
        paths = ["memory:///h5shard/in/a.wav", "memory:///h5shard/in/b.png", "memory:///h5shard/in/c.wav"]
        summary = processor.process(7, paths)
        assert (summary["windows"], summary["errors"], summary["windows_by_model"]) == (
            3, 1, {"audio-digits": 2, "image-digits": 1},
        )  # fmt: skip
        assert sorted(fs.find("/h5shard/out")) == [
            "/h5shard/out/clips/audio-digits/part-00007.parquet",
            "/h5shard/out/clips/image-digits/part-00007.parquet",
            "/h5shard/out/done/part-00007.json",
            "/h5shard/out/errors/part-00007.parquet",
            "/h5shard/out/windows/audio-digits/part-00007.parquet",
            "/h5shard/out/windows/image-digits/part-00007.parquet",
        ]
        audio = pq.read_table(fs.open("/h5shard/out/windows/audio-digits/part-00007.parquet", "rb"))
        assert audio.column("window").to_pylist() == [0, 1]
        assert [len(x) for x in audio.column("labels").to_pylist()] == [2, 2]
        clips = pq.read_table(fs.open("/h5shard/out/clips/audio-digits/part-00007.parquet", "rb"))
        (clip,) = clips.to_pylist()  # a.wav: one row of its two windows
        assert (clip["path"], clip["windows"], len(clip["labels"])) == (paths[0], 2, 2)
        mean = np.mean(audio.column("embedding").to_pylist(), axis=0)  # two full windows: equal weights
        np.testing.assert_allclose(clip["embedding"], mean, rtol=0, atol=1e-6)
        assert json.loads(clips.schema.metadata[b"bridle"])["aggregate"] == "mean"  # a softmax head
        grid = list(models["audio-digits"].manifest.patch_grid)
        assert json.loads(audio.schema.metadata[b"bridle"])["patch_grid"] == grid
        errors = pq.read_table(fs.open("/h5shard/out/errors/part-00007.parquet", "rb")).to_pylist()
        assert [(e["path"], e["code"]) for e in errors] == [("memory:///h5shard/in/c.wav", "corrupt")]
        assert OutputStore("memory://h5shard/out").done_shards() == {7}
    finally:
        fs.rm("/h5shard", recursive=True)


def test_actors_are_sized_from_the_cluster() -> None:
    base = JobSettings(input="x", model_dirs=("m",), output="o")
    one_per_cpu = plan_actors(base, cpus=2, gpus=0, node_cpus=2, shards=10)
    assert (one_per_cpu.actors, one_per_cpu.cpus, one_per_cpu.threads, one_per_cpu.gpus) == (2, 1.0, 1, 0.0)
    three = plan_actors(JobSettings(**{**base.__dict__, "actors": 3}), cpus=2, gpus=0, node_cpus=2, shards=10)
    assert (three.cpus, three.threads) == (pytest.approx(2 / 3), 1)  # a fraction: three fit on two CPUs
    alone = plan_actors(
        JobSettings(**{**base.__dict__, "actors": 1}), cpus=16, gpus=0, node_cpus=8, shards=10
    )
    assert (alone.cpus, alone.threads) == (8, 8)  # no bigger than one node
    gpu = plan_actors(base, cpus=16, gpus=2, node_cpus=8, shards=10)
    assert (gpu.actors, gpu.gpus, gpu.cpus, gpu.providers[0]) == (2, 1.0, 8, CUDA)
    few = plan_actors(base, cpus=2, gpus=0, node_cpus=2, shards=1)
    assert (few.actors, few.cpus, few.threads) == (1, 2.0, 2)  # one shard: one actor with every CPU
    with pytest.raises(SettingsError, match="no GPU"):
        plan_actors(JobSettings(**{**base.__dict__, "device": "gpu"}), cpus=2, gpus=0, node_cpus=2, shards=10)
    with pytest.raises(SettingsError, match="batch_size=0"):
        JobSettings(input="x", model_dirs=("m",), output="o", batch_size=0)
    with pytest.raises(SettingsError, match="precision must list some of"):
        JobSettings(input="x", model_dirs=("m",), output="o", precision=("fp64",))


def test_the_service_does_not_import_ray() -> None:
    """Ray is the batch extra's: serving works without it installed."""
    code = "import sys, bridle.service.app, bridle.service.cli; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "False"


def test_the_cli_refuses_with_a_message_and_status_2(
    tmp_path: Path, mixed_dataset, bundled_models: Path, capsys
) -> None:
    def refused(*args: str) -> str:
        with pytest.raises(SystemExit) as exit_:
            main(list(args))
        assert exit_.value.code == 2
        return capsys.readouterr().err

    assert "does not exist" in refused(str(tmp_path / "nowhere"), "-o", str(tmp_path / "o"))
    assert "does not exist or is not a directory" in refused(
        str(mixed_dataset.root), "-o", str(tmp_path / "o"), "--model-dir", str(tmp_path / "no-model")
    )
    assert "batch_size=0" in refused(str(mixed_dataset.root), "-o", str(tmp_path / "o"), "--batch-size", "0")
    assert "window hop must be in (0, 1]" in refused(
        str(mixed_dataset.root), "-o", str(tmp_path / "o"), "--window-hop", "0"
    )
    message = refused(
        str(mixed_dataset.root),
        "-o",
        str(tmp_path / "o"),
        "--model-dir",
        str(bundled_models),
        "--aggregate",
        "max",
    )  # the bundled heads are softmax ones
    assert "aggregate=max is for multi-label (sigmoid) heads" in message
    assert not (tmp_path / "o").exists()  # refused before anything was written
    other = tmp_path / "other"
    OutputStore(str(other)).claim({"files": 1, "digest": "d", "shard_files": 64, "models": {}})
    message = refused(str(mixed_dataset.root), "-o", str(other), "--model-dir", str(bundled_models))
    assert "holds the output of another job" in message
