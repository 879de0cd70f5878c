"""Reshard: a subset's samples copied into fresh webdataset shards for training."""
