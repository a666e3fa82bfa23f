"""The small BEATs checkpoints of bridle.data.beats_files, imported and exported through the real CLIs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bridle.data import beats_files as upstream
from bridle.data.reference_beats import BEATs, Tokenizers


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600)


class Exported:
    """The small model imported (with its tokenizer) and exported through the real CLIs. `audioset`:
    its label_dict holds mids, named through a class_labels_indices.csv (`--labels`)."""

    def __init__(self, root: Path, num_frames: int = upstream.NUM_FRAMES, audioset: bool = False) -> None:
        self.model: BEATs = upstream.make_model()
        self.tokenizer: Tokenizers = upstream.make_tokenizer()
        label_dict = upstream.MID_DICT if audioset else upstream.LABEL_DICT
        self.model_path = upstream.save_upstream(
            root / "BEATs_small.pt", self.model, upstream.MODEL_CFG, label_dict=label_dict
        )
        self.tokenizer_path = upstream.save_upstream(
            root / "Tokenizer_small.pt", self.tokenizer, upstream.TOKENIZER_CFG
        )
        self.servable = root / "servable"
        self.model_dir = root / "beats-small"
        csv = root / "class_labels_indices.csv"
        labels = ["--labels", str(upstream.write_class_labels(csv))] if audioset else []
        self.import_run = run_cli(
            "bridle.importers.cli", "beats", "--checkpoint", str(self.model_path), "--tokenizer",
            str(self.tokenizer_path), "--out", str(self.servable), "--num-frames", str(num_frames), *labels,
        )  # fmt: skip
        assert self.import_run.returncode == 0, self.import_run.stderr
        self.export_run = run_cli("bridle.export.cli", "export", str(self.servable), str(self.model_dir))
        assert self.export_run.returncode == 0, self.export_run.stderr
