"""The inference engine: model directories, ONNX Runtime sessions, windows, the dynamic batcher, and the
engine process with its front ends' client. No torch and no web framework (pyproject.toml's contracts)."""
