"""The leaderboard: a Parquet store of results, submission, aggregation, a static site and
publishing to the Hugging Face Hub (see ``docs/leaderboard.md``).

Modules: ``store`` (the append-only, versioned Parquet store), ``submit`` (evaluate a
predictions file and add its rows), ``aggregate`` (means over categories, ranks, exports),
``render`` (the offline HTML/markdown site and figures), ``publish`` (the Hub dataset
repository) and ``paper`` (the published M2AD-Synergy tables, ``paper_synergy.csv``).
"""
