"""Filtering: the filter job over a pool's shards, and the pool-wide machinery (dedup, clustering)."""
