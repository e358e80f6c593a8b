"""Files: checkpoints (weights + recipe) and ONNX export with onnxruntime parity."""
