"""An example clip-curation plugin: a filter and a stage registered through entry points."""
