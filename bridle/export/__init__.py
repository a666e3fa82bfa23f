"""Export: checkpoints -> ONNX model directories, and their verification."""
