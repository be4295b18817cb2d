"""surf_accel: SURF (preview with noise reshifting + windowed refiner) for diffusers video DiTs."""

__version__ = "0.1.0"
