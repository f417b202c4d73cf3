"""DTensor FSDP2 / tensor / sequence / 2D parallelism, verified against a single process (see README.md)."""
