"""Service: FastAPI on ONNX Runtime; imports no torch."""
