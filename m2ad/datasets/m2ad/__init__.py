"""M2AD (Cao, Cheng et al., arXiv 2505.10996): multi-view, multi-illumination anomaly detection.

10 categories, 12 views (turntable azimuths 000..330) x 10 illuminations per specimen,
1024 x 1024 PNGs; the split and labels come from ``jsons/meta_unsupervised.json``.
Layout parser: :mod:`.layout`; fixture writer (the synthetic M2AD of ``m2ad synth``):
:mod:`.fixture`.

Download: only what is known is pinned (reference m2ad.md section 10): the revision 72d6620 is
the only Hub commit whose content was recorded, and only jsons.zip's LFS sha256 and size at
that commit are known.  The category zips (13.9-16.4 GB each, about 153 GB in all) are
verified against the Hub's LFS sha256 (X-Linked-Etag) at download time; the dataset card then
records the full commit hash and every file's sha256, which pins what was actually used.
"""

from __future__ import annotations

import datasets

from m2ad.datasets.m2ad import fixture
from m2ad.datasets.m2ad.layout import CATEGORIES, CONFIGURATIONS, ILLUMINATIONS, META_PATH, VIEWS, M2ADLayout, defect_types_from_dirname
from m2ad.datasets.spec import DatasetSpec, ExtraColumn, FileSpec, Fixture, HubSource

__all__ = ["CATEGORIES", "CONFIGURATIONS", "ILLUMINATIONS", "META_PATH", "SPEC", "VIEWS", "defect_types_from_dirname"]

SPEC = DatasetSpec(
    name="m2ad",
    display_name="M2AD",
    title="M2AD-1024: multi-view, multi-illumination visual anomaly detection",
    license="Apache-2.0 (tag of the Hugging Face dataset card ChengYuQi99/M2AD; the paper states none)",
    license_id="apache-2.0",
    citation=(
        "Yunkang Cao, Yuqi Cheng, Xiaohao Xu, Yiheng Zhang, Yihan Sun, Yuxiang Tan, Yuxin Zhang, "
        "Xiaonan Huang, Weiming Shen. Visual Anomaly Detection under Complex View-Illumination "
        "Interplay: A Large-Scale Benchmark. arXiv:2505.10996, 2025."
    ),
    homepage="https://hustcyq.github.io/M2AD/",
    description=(
        "M2AD (Cao, Cheng et al., arXiv 2505.10996): multi-view, multi-illumination visual anomaly "
        "detection; 12 views x 10 illuminations per specimen."
    ),
    categories=CATEGORIES,
    files=(
        FileSpec(
            "jsons.zip",
            sha256="13bbf10e5f6d6f5debf4d048ec50ddc278e6bad2a05fdd793ce3e1d228686c67",
            size=2_544_806,
        ),
        *(FileSpec(f"{category}.zip", categories=(category,)) for category in CATEGORIES),
    ),
    source=HubSource("ChengYuQi99/M2AD", revision="72d6620"),
    layout=M2ADLayout(),
    fixture=Fixture(fixture.write, fixture.CATEGORIES, fixture.DEFAULT_CATEGORIES, fixture.pack),
    modalities=("image", "mask"),
    axes=("view", "illumination"),
    extra_columns={
        "detectable": ExtraColumn(
            datasets.Value("bool"),
            "False when the defect is in view but judged undetectable under this light (the official "
            "Invariant protocol drops these images); None where the release leaves it empty",
        )
    },
    mask_note=(
        "One mask per (specimen, view), shared by its 10 lights: 1024 x 1024, mode L, 0/255 (the official "
        "loader takes > 0). Defects are tiny (0.005-0.46 % of the pixels)."
    ),
    geometry="longer-side",
    geometry_note=(
        "The official M2AD code resizes to 256 (or 512) with bilinear filtering, then centre-crops the same size "
        "(a no-op on these square images); Dinomaly and INP-Former use 256 -> 224 and 512 -> 448. The images "
        "are square, so the longer-side rule and a square resize coincide."
    ),
    protocols=("invariant", "synergy", "standard"),
    class_names={
        "verbatim": {category: category for category in CATEGORIES},
        "readable": {category: category.lower() for category in CATEGORIES},  # our choice: no published mapping
    },
    shot_unit="specimen",
    same_size_within_specimen=True,
    image_size=1024,
    notes=(
        "jsons.zip was re-uploaded later (1,100,022 B in 2026, sha256 not recorded); "
        "use --revision main for the current files, verified against the Hub's LFS sha256."
    ),
)
