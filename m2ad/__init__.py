"""m2ad: benchmark harness and dataset toolkit for multi-view, multi-illumination anomaly detection.

Data flows one way: download -> shard (Arrow) -> protocol selects samples -> method predicts
-> predictions file -> metrics -> leaderboard.  The core modules of this package
(``schema``, ``synth``, ``shard``, ``data``, ``download``, ``metrics``, ``predictions``) import
nothing from ``protocols``, ``baselines`` or ``leaderboard``; only the orchestration modules
(``m2ad.run``, ``m2ad.embedded`` and ``m2ad.cli``) sit on top of everything.
"""

__version__ = "0.1.0"
