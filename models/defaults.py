"""The one source of the model's defaults, importable without torch (the config and the CLI's --help stay fast).

:class:`models.lstm_ae.LSTMAEConfig`, :meth:`models.detector.AnomalyDetector.fit` and the configuration
object (:class:`pipeline.config.ModelSettings`) all take their defaults from here.

>>> DEFAULT_WINDOW, DEFAULT_HIDDEN_SIZE, DEFAULT_LATENT_SIZE, DEFAULT_SCORE_STEPS
(30, 32, 8, 5)
"""

DEFAULT_WINDOW = 30
DEFAULT_HIDDEN_SIZE = 32
DEFAULT_LATENT_SIZE = 8
# for new models; a network config without score_steps (older checkpoints) scores all of a window's steps
DEFAULT_SCORE_STEPS = 5
