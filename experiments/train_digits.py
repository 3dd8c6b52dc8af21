"""Train the shipped ``digits`` flow model (see ``--help``)."""

from experiments.shipped_models.training import main

if __name__ == "__main__":
    main("digits")
