"""``python -m surf_accel.training CONFIG [options]`` = ``surf-accel train-refiner CONFIG``."""

import sys

from surf_accel.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-refiner", *sys.argv[1:]]))
