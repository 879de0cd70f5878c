"""Jobs: one module per ``curate`` subcommand, each defining ``register(app)``.

Every ``curate`` start (``--help`` too) imports all of them, so they import stage libraries (torch,
open_clip, pandas, ...) inside their commands, never at module level; tests/test_cli.py checks.
"""
