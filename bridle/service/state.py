"""What the routes share with the app's lifespan and the server: settings, inference and admission."""

from __future__ import annotations

from dataclasses import dataclass

from bridle.service.errors import ServiceError, retry_later
from bridle.service.infer import Inference
from bridle.service.middleware import AdmissionState
from bridle.service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    inference: Inference
    admission: AdmissionState
    startup_error: Exception | None = None  # why the lifespan could not load the models

    def unavailable(self) -> ServiceError | None:
        """The 503 of a service that cannot take work yet (warming up) or any more (draining)."""
        if self.admission.draining:
            return self.admission.draining_error()
        if not self.inference.ready:
            return retry_later("not_ready", "the models are still warming up", self.settings.retry_after_s)
        return None
