"""Triton kernels and their launchers, installed as surf_accel.triton_kernels."""
