"""vae-tf: variational autoencoders that do not collapse silently.

The library (this package) holds data sets, latent families, likelihoods, networks, objectives,
metrics, export and plots. It never imports the application packages ``training`` (CLI, MLflow)
or ``serving`` (servers, clients). Submodules are imported lazily by the user so that
``import vae_tf`` stays cheap: TensorFlow is loaded by the modules that need it.
"""

from vae_tf.errors import ConfigError, DataError, ModelNotFoundError, VaeTfError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "ModelNotFoundError", "VaeTfError", "__version__"]
