"""Benchmarks that ship with the package: the results-file header (``record``), the toy-world
benchmark machinery (``toy``: runs, generation, CPU timing, per-seed shards) and the stack table
behind ``surf-accel bench`` (``stacking``). The repository's ``benchmarks/`` scripts build on them."""
