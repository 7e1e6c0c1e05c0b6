"""Models.

* :mod:`jdlfs.models.classic` -- MLPs and CNNs as :func:`jdlfs.layers.serial`
  stacks of named layers (``perceptron``, ``mlp``, ``lenet``, ``cifar_cnn``),
  re-exported here: ``models.mlp((784, 128, 10))``.
* Models with residual paths or several inputs (Transformer, MAE, language
  models) live in their own modules as plain functions over named nested
  dicts of parameters (``params["encoder"]["layers"][0]["attn"]["qkv"]["w"]``),
  each block an ``init_*(key, ...)`` / apply pair calling
  :mod:`jdlfs.functional`, in the style of nanoGPT's ``model.py``.
"""

from .classic import cifar_cnn, lenet, mlp, perceptron

__all__ = ["cifar_cnn", "lenet", "mlp", "perceptron"]
