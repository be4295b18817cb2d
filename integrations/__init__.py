"""Per-model and per-accelerator adapters, installed as surf_accel.integrations."""
