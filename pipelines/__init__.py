"""Jobs: one module per ``curate`` subcommand, each defining ``register(app)``."""
