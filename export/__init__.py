"""medfake.export: ONNX / TensorRT export of diffusion components."""
