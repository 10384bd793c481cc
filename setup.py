"""medfake: synthetic medical-image data at scale (see README.md).

The repository root *is* the ``medfake`` package (``package_dir={"medfake": "."}``), so the
top level keeps the layout ``engine/``, ``kernels/``, ``export/``, ``pipelines/`` while
everything imports as ``medfake.engine`` etc. Nothing named ``engine`` or ``export`` is ever
installed as a top-level package.

Packages are *discovered* (every folder with an ``__init__.py`` below the four layers), never
listed, so a new subpackage cannot be left out of the wheel; ``tests/test_packaging.py`` builds
the wheel and sdist and checks every module and preset is in them.

Version ranges here are for library users; ``make``/CI install the exact tested set in
``constraints.txt`` (refresh it with ``make lock``).
"""
from setuptools import find_packages, setup

LAYERS = ("engine", "kernels", "export", "pipelines")
PACKAGES = ["medfake"] + [f"medfake.{p}" for p in find_packages(".", include=[
    f"{layer}{tail}" for layer in LAYERS for tail in ("", ".*")])]
# Data files shipped with the code (JSON presets and configs), at any depth of any layer.
PACKAGE_DATA = {p: ["*.json", "**/*.json", "*.yaml", "**/*.yaml"] for p in PACKAGES[1:]}

# One place for every optional dependency set. xformers is its own extra: its wheels pin one
# exact torch, so putting it in `gpu` would make pip replace the user's CUDA torch build.
_ONNX = ["onnx>=1.16", "onnxscript", "onnxslim"]
EXTRAS = {
    # onnxruntime and onnxruntime-gpu both own the `onnxruntime` module: pick exactly one extra.
    # onnxscript: torch's dynamo ONNX exporter; onnxslim: graph simplification after export.
    "cpu": [*_ONNX, "onnxruntime>=1.18"],
    "gpu": [*_ONNX, "onnxruntime-gpu>=1.18", "tensorrt>=10"],
    "xformers": ["xformers"],  # install only with the exact torch its wheel was built for
    "dev": ["pytest", "pytest-benchmark"],
    # offline text detection on imported pixels (--detect-text): PP-OCR models ship in the wheel
    "ocr": ["rapidocr>=3.10"],
    # the openvino backend: OpenVINO's CPU plugin on the ONNX export (fp32; bf16 where native)
    "openvino": ["openvino>=2024.6"],
}

setup(
    name="medfake",
    version="0.1.0",
    description="High-throughput synthetic medical-image data: SD synthesis, CLIP training, evaluation",
    python_requires=">=3.10",
    package_dir={"medfake": "."},
    packages=PACKAGES,
    package_data=PACKAGE_DATA,
    include_package_data=False,
    install_requires=[
        # Floor 2.6: torch.load(weights_only=True), which engine/safe_load.py relies on, can be
        # bypassed before it (CVE-2025-32434). No upper bound: torch must never fight the
        # locally provided (CUDA) build.
        "torch>=2.6",
        "torchvision",
        "numpy",
        "pillow",
        "tqdm",
        "safetensors",
        "diffusers>=0.30",
        # <5.24: transformers 5.24.0 requires peft>=0.22.0, which is not released (newest 0.21.2);
        # diffusers' load_lora_weights then raises "The version of PEFT you are using is not
        # compatible" (measured 2026-12-01). Lift once a peft that satisfies it exists.
        "transformers>=4.40,<5.24",
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
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["medfake=medfake.pipelines.cli:main"]},
)
