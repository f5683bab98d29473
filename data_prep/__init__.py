"""Converters from the published pretraining datasets to RAMEN's sharded ArrayRecord records.

One module per dataset (``mmearth``, ``flairhub``, ``worldstrat``), each runnable as
``python -m data_prep.<name> --help`` (``flairhub_dates`` reads FLAIR-HUB's date GeoPackages);
``common`` holds the resumable TFDS writer; the record format it writes and its readers
(``load_split``, ``load_stats``) are the library's (``ramen_jax.data.records``), and so are the
datasets' modalities (``ramen_jax.data.catalog``): this package imports the library, never the
reverse. ``standins`` writes small files in each release's layout
(``python -m data_prep.standins``: stand-ins for the measurement tools).
See docs/data_prep.md.
"""

from ramen_jax.data.records import load_split, load_stats

CONVERTERS = ("mmearth", "flairhub", "worldstrat")

__all__ = ["CONVERTERS", "load_split", "load_stats"]
