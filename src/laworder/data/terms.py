"""The terms of use of the datasets laworder ships weights for, by dataset name.

Shipped segmenters (``laworder.seg.ship``) and generators (``laworder.synth.ship``) are derived from
the data, so the data's terms bind them alike: both write this text onto their cards.
"""

from __future__ import annotations

DATA_TERMS: dict[str, str] = {
    "polyps": (
        "Trained on Kvasir-SEG (Simula Research Laboratory / Vestre Viken Health Trust; D. Jha et al., "
        "\"Kvasir-SEG: A Segmented Polyp Dataset\", MMM 2020) and CVC-ClinicDB (Hospital Clinic and Computer "
        "Vision Center, Barcelona; J. Bernal et al., CMIG 43 (2015) 99-111). Both datasets are for research "
        "and educational use only; commercial use is not allowed. These weights are derived from them: use "
        "them for research and education only, cite both datasets, and never for clinical decisions."),
    "brisc": (
        "Trained on BRISC 2025 (A. Fateh et al., \"BRISC: Annotated Dataset for Brain Tumor Segmentation and "
        "Classification\", arXiv:2506.14318, 2025; Kaggle briscdataset/brisc2025), reported as CC BY 4.0 by "
        "other users of the dataset (not checked against the Kaggle page): cite the paper and give "
        "attribution. Shipped for research and education only; never for clinical decisions."),
}
