"""Where the model graphs run, as the service sees it: one interface, two engines.

- `LocalEngine` (bridle/runtime/local.py): in this process, a dynamic batcher per model graph
  (`bridle-serve` in one process, and the engine process itself);
- `EngineClient` (bridle/runtime/client.py): in the engine process, through a shared-memory ring and
  small messages over a Unix socket (a front-end process, BRIDLE_FRONTENDS=N).

The service picks one from its settings (bridle/service/engines.py `make_engine`) and then uses only what
is declared here, in this order: `load`, then `start`, then `warm_up` (the service is not ready until
`ready`), `submit` and `reload` while serving, `stop` at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from bridle.runtime.models import LoadedModel


class InferenceEngine(Protocol):
    on_gpu: bool  # the models run on a GPU (known once loaded): the service takes the GPU's defaults

    async def load(self) -> dict[str, LoadedModel]:
        """What this process needs of the models, by key (the sessions it runs here: all of them in
        process; a front end's manifests and features graph); `ModelLoadError` when one does not load."""
        ...

    def start(self) -> None:
        """Start running (in the event loop): the batchers, or the connection to the engine process."""
        ...

    @property
    def ready(self) -> bool:
        """The graphs can run: warm here, or a warm engine process connected."""
        ...

    async def warm_up(self) -> None:
        """Return once ready: warm every graph up here, or wait for the warm engine process."""
        ...

    async def submit(
        self, model: str, graph: str, rows: np.ndarray, outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run `graph` of the load `model` (its instance id) on `rows` (k, ...) in the batches of
        everyone else; the `outputs` named (all when None), each (k, ...). `EngineError` when it was
        not run (a full queue, a time-out, the engine gone)."""
        ...

    async def reload(self) -> dict[str, Any]:
        """Read the model directories again and serve what they hold now: {"ok", "models", "loaded",
        "unloaded"}, or {"ok": False, "message", "models"} when a load failed (what served serves on)."""
        ...

    async def stop(self) -> None: ...
