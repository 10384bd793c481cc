"""medfake: synthetic medical-image data engine.

Subpackages: ``engine`` (library: data format, phantoms, models, sampling, metrics),
``kernels`` (attention/fused kernels), ``export`` (ONNX/TensorRT), ``pipelines`` (jobs + CLI).
"""
__version__ = "0.1.0"
