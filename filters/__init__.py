"""Quality filters: one module per filter, each a :class:`curation.stage.Filter`."""
