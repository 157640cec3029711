"""Model export."""
