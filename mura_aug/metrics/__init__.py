"""Measures of synthetic images: FID / KID, precision / recall, diversity, memorisation (no figures, no stages).

`features` holds the feature extractors (the standard Inception FID network, an offline stand-in) and the
one wording of their labels (`metric_label`);
`measures` the measures computed from features or pixels. Both work on uint8 NCHW arrays.
"""
from mura_aug.metrics.features import (DEFAULT_EXTRACTOR, EXTRACTOR_NAMES, NVIDIA_INCEPTION_FILE, NVIDIA_INCEPTION_URL,
                                       OFFLINE_FID_LABEL, Extractor, InceptionExtractor, OfflineExtractor,
                                       OfflineFidWarning, get_extractor, metric_label)
from mura_aug.metrics.measures import (COLLAPSE_FRACTION, MEMORISATION_RATIO, PR_NEIGHBOURS, MemorisationReport,
                                       compute_metrics, diversity, feature_statistics, fid_from_features,
                                       frechet_distance, kid_from_features, mean_pairwise_distance, memorisation,
                                       memorisation_of_files, memorised_fake_paths, mmd2_unbiased,
                                       pairwise_distances, pixel_descriptors, precision_recall, read_image_files,
                                       rms_distances)

__all__ = ["DEFAULT_EXTRACTOR", "EXTRACTOR_NAMES", "NVIDIA_INCEPTION_FILE", "NVIDIA_INCEPTION_URL",
           "OFFLINE_FID_LABEL", "Extractor", "InceptionExtractor", "OfflineExtractor", "OfflineFidWarning",
           "get_extractor", "metric_label", "COLLAPSE_FRACTION", "MEMORISATION_RATIO", "PR_NEIGHBOURS",
           "MemorisationReport", "compute_metrics", "diversity", "feature_statistics", "fid_from_features",
           "frechet_distance", "kid_from_features", "mean_pairwise_distance", "memorisation",
           "memorisation_of_files", "memorised_fake_paths", "mmd2_unbiased", "pairwise_distances",
           "pixel_descriptors", "precision_recall", "read_image_files", "rms_distances"]
