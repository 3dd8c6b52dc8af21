"""Train the shipped ``checkerboard`` flow model (see ``--help``)."""

from bespoke_jax._model_training import main

if __name__ == "__main__":
    main("checkerboard")
