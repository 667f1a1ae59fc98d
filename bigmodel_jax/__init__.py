"""bigmodel_jax: train neural networks in JAX/Flax and compress them for deployment.

Research code imports the pure pieces it needs, e.g.

    from bigmodel_jax import models, losses, optim, train
"""

__version__ = '0.1.0'
