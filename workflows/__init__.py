"""Workflows: multi-step runs above the capabilities (the job file runner, the ablation, the demo)."""
