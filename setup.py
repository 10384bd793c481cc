"""medfake: synthetic medical-image data at scale (see README.md).

The repository root *is* the ``medfake`` package (``package_dir={"medfake": "."}``), so the
top level keeps the layout ``engine/``, ``kernels/``, ``export/``, ``pipelines/`` while
everything imports as ``medfake.engine`` etc. Nothing named ``engine`` or ``export`` is ever
installed as a top-level package.
"""
from setuptools import setup

SUBPACKAGES = ["engine", "kernels", "export", "pipelines"]

setup(
    name="medfake",
    version="0.1.0",
    description="High-throughput synthetic medical-image data: SD synthesis, CLIP training, evaluation",
    python_requires=">=3.10",
    package_dir={"medfake": ".", **{f"medfake.{p}": p for p in SUBPACKAGES}},
    packages=["medfake", *[f"medfake.{p}" for p in SUBPACKAGES]],
    package_data={"medfake.engine": ["presets/*.json", "presets/*/*.json"]},
    include_package_data=False,
    install_requires=[
        # torch is not pinned: it must never fight the locally provided build.
        "torch>=2.1",
        "torchvision",
        "numpy",
        "pillow",
        "tqdm",
        "safetensors",
        "diffusers>=0.30",
        "transformers>=4.40",
        "open_clip_torch>=2.24",
        "webdataset>=0.2.86",
        "scikit-learn",
        "matplotlib",
        "scipy",
        "accelerate",
        "pydicom>=3.0",  # DICOM import (engine/importers/dicom.py)
        "peft>=0.17",  # DreamBooth LoRA adapters (diffusers' LoRA loaders use it)
        "deepspeed>=0.14",
        "tensorboard",
        "timm>=1.0",  # ResNet-18 / EfficientNetV2 downstream classifiers (engine/classifiers.py)
    ],
    extras_require={
        # onnxruntime and onnxruntime-gpu both own the `onnxruntime` module: pick exactly one extra.
        # onnxscript: torch's dynamo ONNX exporter; onnxslim: graph simplification after export.
        "cpu": ["onnx", "onnxscript", "onnxslim", "onnxruntime"],
        "gpu": ["onnx", "onnxscript", "onnxslim", "onnxruntime-gpu", "tensorrt", "xformers"],
        "dev": ["pytest", "pytest-benchmark"],
    },
    entry_points={"console_scripts": ["medfake=medfake.pipelines.cli:main"]},
)
