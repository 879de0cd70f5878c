"""Quality filters: one module per filter, each a :class:`curation.core.stage.Filter`."""
