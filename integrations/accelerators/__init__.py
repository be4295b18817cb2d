"""Accelerators SURF stacks with (installed as surf_accel.integrations.accelerators)."""
