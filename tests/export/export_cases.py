"""Constants the export tests share with their fixtures (conftest.py)."""

LABELS = ["cat", "dog", "bird"]
MICRO_PRESETS = ("micro-audio", "micro-image", "micro-video")
VIDEO_WINDOW_SECONDS = 3.0
