"""Dataset cards: what a curated set is, how it was made and what it is worth, from recorded stats."""
