"""Stage 3: turning a generator entry into a dataset (poses, filters, metrics, writers)."""
