"""Stage 2: the landmark-conditioned face DiT, its diffusion arithmetic and its artifact."""
