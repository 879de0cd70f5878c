"""Core: config, storage, uids, pools, subsets, stats, the stage abstraction, the shard runner.

Everything above (capabilities, workflows, the CLI) imports from here; nothing here imports them.
"""
