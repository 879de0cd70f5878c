"""Core library: data model (uids, pools, attribute tables, subsets), stages, shard runner, engines."""

__version__ = "0.1.0"
