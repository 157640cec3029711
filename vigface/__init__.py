"""VIGFace core ML."""
