"""Training loops for both stages."""
