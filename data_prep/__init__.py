"""Converters from the published pretraining datasets to RAMEN's sharded ArrayRecord records.

One module per dataset (``mmearth``, ``flairhub``, ``worldstrat``), each runnable as
``python -m data_prep.<name> --help`` (``flairhub_dates`` reads FLAIR-HUB's date GeoPackages);
``common`` holds the record contract, the resumable TFDS writer and the readers the input
pipeline uses (``load_split``, ``load_stats``); ``standins`` writes small files in each release's
layout.
See docs/data_prep.md.
"""

from data_prep.common import load_split, load_stats

CONVERTERS = ("mmearth", "flairhub", "worldstrat")

__all__ = ["CONVERTERS", "load_split", "load_stats"]
