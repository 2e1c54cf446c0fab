"""``python -m segconvert ...`` (and ``torchrun --nproc-per-node N -m segconvert ...``): the ``segconvert`` CLI."""

from segconvert.cli import main

if __name__ == "__main__":
    main()
