"""jdlfs — JAX deep learning from scratch.

Pure functional layers whose backward passes are written by hand as
``jax.custom_vjp`` rules (:mod:`jdlfs.functional`), and a checker that proves
each rule right (:mod:`jdlfs.gradcheck`).
"""

__version__ = "0.1.0"
