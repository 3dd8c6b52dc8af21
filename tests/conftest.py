"""Suite-wide JAX settings: strict dtype promotion, so that an implicit promotion (a silent
dtype change a user would not expect) fails the test that makes it.

The environment variable carries the setting into the subprocesses the suite starts (the
resumed and distributed training runs, the command line).
"""

import os

os.environ["JAX_NUMPY_DTYPE_PROMOTION"] = "strict"

import jax  # noqa: E402  (after the environment is set)

jax.config.update("jax_numpy_dtype_promotion", "strict")
