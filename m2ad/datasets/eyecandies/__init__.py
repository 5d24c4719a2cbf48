"""Eyecandies (Bonfiglioli et al., ACCV 2022): 10 synthetic candy categories, each sample seen
under six lights, with depth and normals.

Layout parser: :mod:`.layout`; fixture writer: :mod:`.fixture`.  Per category: 1,000 train,
100 val, 50 labelled ``test_public`` (25 / 25) and 400 ``test_private`` samples (labels
withheld).  m2ad shards ``train`` and ``test_public``; each sample becomes six records (one
per light, axis ``illumination``) that share its depth (modality :mod:`m2ad.modalities.depth`,
with ``depth_min`` / ``depth_max`` to make it metric), its normals
(:mod:`m2ad.modalities.normals`) and its mask.

Source: Google Drive only (``eyecan-ai/eyecandies``, ``eyecandies/commands/download.py``: one
tar per category, extracted by ``eyec ec-get`` into ``<root>/<Category>``); no checksum is
published, so there is nothing to pin: fetch by hand and shard the folder.
"""

from __future__ import annotations

import datasets

from m2ad.datasets.eyecandies import fixture
from m2ad.datasets.eyecandies.layout import EyecandiesLayout
from m2ad.datasets.spec import DatasetSpec, ExtraColumn, Fixture, ManualSource

CATEGORIES = ("CandyCane", "ChocolateCookie", "ChocolatePraline", "Confetto", "GummyBear", "HazelnutTruffle",
              "LicoriceSandwich", "Lollipop", "Marshmallow", "PeppermintCandy")
READABLE = {"CandyCane": "candy cane", "ChocolateCookie": "chocolate cookie", "ChocolatePraline": "chocolate praline",
            "Confetto": "confetto", "GummyBear": "gummy bear", "HazelnutTruffle": "hazelnut truffle",
            "LicoriceSandwich": "licorice sandwich", "Lollipop": "lollipop", "Marshmallow": "marshmallow",
            "PeppermintCandy": "peppermint candy"}

SPEC = DatasetSpec(
    name="eyecandies",
    display_name="Eyecandies",
    title="Eyecandies: a synthetic multi-light RGB-D anomaly detection dataset",
    license="not stated by the authors (code GPL-3.0); check the project page before redistributing",
    license_id="other",
    citation=(
        "Luca Bonfiglioli, Marco Toschi, Davide Silvestri, Nicola Fioraio, Daniele De Gregorio. The Eyecandies Dataset "
        "for Unsupervised Multimodal Anomaly Detection and Localization. ACCV 2022."
    ),
    homepage="https://eyecan-ai.github.io/eyecandies/",
    description=(
        "Eyecandies (Bonfiglioli et al., ACCV 2022): 10 photo-realistic synthetic candy categories; each sample is "
        "rendered under six lights, with a depth map and a normal map; the public test split is labelled."
    ),
    categories=CATEGORIES,
    files=(),
    source=ManualSource(
        "Eyecandies is on Google Drive only: run `pip install eyecandies` then `eyec ec-get +o ROOT` (or fetch the tars "
        "named in eyecandies/commands/download.py and extract each into ROOT/<Category>), then `m2ad shard ROOT OUT`."
    ),
    layout=EyecandiesLayout(categories=CATEGORIES),
    fixture=Fixture(fixture.write, tuple(fixture.SHAPES), fixture.DEFAULT_CATEGORIES, fixture.pack),
    modalities=("image", "mask", "depth", "normals"),
    axes=("illumination",),
    extra_columns={
        "depth_min": ExtraColumn(datasets.Value("float32"), "info_depth normalization.min (metres): depth 0 maps to it"),
        "depth_max": ExtraColumn(datasets.Value("float32"), "info_depth normalization.max (metres): depth 1 maps to it"),
    },
    mask_note=(
        "`<index>_mask.png` (0/255) for every `test_public` sample (all zeros for normal ones), shared by its six "
        "lights; training samples have none. The per-defect masks (bumps, dents, colors, normals) are not read."
    ),
    geometry="square",
    geometry_note=(
        "The renders are 512 x 512 (UNCERTAIN). Depth and normals are resized by nearest neighbour at a shard "
        "resolution. The M3DM / CFM lineage takes one light (image_4 or image_5) as its RGB input; the eyecandies "
        "to_anomalib DAG uses image_5."
    ),
    protocols=("standard", "eyecandies"),
    class_names={"verbatim": {category: category for category in CATEGORIES}, "readable": READABLE},
    shot_unit="specimen",
    same_size_within_specimen=True,
)
