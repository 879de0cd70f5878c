"""Training (open_clip_train driven, plus a supervised baseline) and evaluation of curated sets."""
