"""Two gloo processes train the tokenizer; their codebooks must agree (EMA statistics all-reduced)."""

from __future__ import annotations

from pathlib import Path

import torch
from training_helpers import MICRO, micro_overrides, run_torchrun

SCRIPT = """
import sys, torch
from bridle.training.distributed import init_from_env, shutdown
from bridle.training.recipe import load_recipe
from bridle.model.bridle import quantizers
from bridle.training.stages import prepare_run, run_stage
info = init_from_env()
recipe = load_recipe(sys.argv[1], sys.argv[3:])
ctx = prepare_run(recipe, info, reuse_config=False)
run_stage(ctx, 0, resume=False)
objective = run_stage(ctx, 1, resume=False).objective
books = torch.stack([q.codebooks for q in quantizers(objective.tokenizer)])
torch.save(books, f"{sys.argv[2]}/codebooks-{info.rank}.pt")
shutdown(info)
"""


def test_two_processes_keep_codebooks_in_step(tmp_path: Path) -> None:
    script = tmp_path / "ddp_tokenizer.py"
    script.write_text(SCRIPT)
    overrides = [
        *micro_overrides("image", tmp_path, test=False),
        "data.batch_size=4",
        "stages=[{kind: pretrain, steps: 2}, {kind: tokenizer, steps: 6}]",
    ]
    done = run_torchrun([str(script), str(MICRO), str(tmp_path), *overrides])
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"codebooks-{r}.pt") for r in (0, 1))
    assert a.abs().sum() > 0
    torch.testing.assert_close(a, b)
