"""Selection: subsets from scores and verdicts (top-k, thresholds, random controls, set algebra)."""
