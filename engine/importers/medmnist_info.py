"""Class names and modality words of the single-label 2D MedMNIST v2 datasets.

Label order and names follow ``medmnist/info.py`` (MedMNIST v2.1.0), so ``.npz`` files import
with readable class names without installing the ``medmnist`` package. Reworded for captions:
RetinaMNIST grades "0".."4", BreastMNIST "normal, benign", BloodMNIST's long granulocyte
label. ChestMNIST is multi-label and the ``*3d`` sets are volumes: neither fits a
one-class-per-image dataset.
"""
from __future__ import annotations

_ORGANS = ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
           "liver", "lung-left", "lung-right", "pancreas", "spleen"]

MEDMNIST: dict[str, tuple[str, list[str]]] = {  # flag -> (modality word, labels by index)
    "pathmnist": ("colon pathology", [
        "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
        "normal colon mucosa", "cancer-associated stroma",
        "colorectal adenocarcinoma epithelium"]),
    "dermamnist": ("dermatoscopy", [
        "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
        "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
        "vascular lesions"]),
    "octmnist": ("retinal OCT", [
        "choroidal neovascularization", "diabetic macular edema", "drusen", "normal"]),
    "pneumoniamnist": ("chest X-ray", ["normal", "pneumonia"]),
    "retinamnist": ("fundus photography", [f"diabetic retinopathy grade {i}" for i in range(5)]),
    "breastmnist": ("breast ultrasound", ["malignant", "normal or benign"]),
    "bloodmnist": ("blood cell microscopy", [
        "basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte",
        "monocyte", "neutrophil", "platelet"]),
    "tissuemnist": ("kidney cortex microscopy", [
        "collecting duct, connecting tubule", "distal convoluted tubule",
        "glomerular endothelial cells", "interstitial endothelial cells", "leukocytes",
        "podocytes", "proximal tubule segments", "thick ascending limb"]),
    "organamnist": ("abdominal CT", _ORGANS),
    "organcmnist": ("abdominal CT", _ORGANS),
    "organsmnist": ("abdominal CT", _ORGANS),
}
