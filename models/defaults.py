"""The one source of the model's defaults, importable without torch (the config and the CLI's --help stay fast).

:class:`models.lstm_ae.LSTMAEConfig`, :meth:`models.detector.AnomalyDetector.fit` and the configuration
object (:class:`pipeline.config.ModelSettings`) all take their defaults from here.

>>> DEFAULT_WINDOW, DEFAULT_HIDDEN_SIZE, DEFAULT_LATENT_SIZE, DEFAULT_SCORE_STEPS, DEFAULT_FULL_STRETCH_READINGS
(30, 32, 8, 10, 1200)
>>> DEFAULT_SCORE_CHANNEL_SHARE
0.5
"""

DEFAULT_WINDOW = 30
DEFAULT_HIDDEN_SIZE = 32
DEFAULT_LATENT_SIZE = 8
# for new models; a network config without score_steps (older checkpoints) scores all of a window's steps
DEFAULT_SCORE_STEPS = 10
# a training stretch shorter than this (readings per segment) gets its threshold widened by sqrt(1200 / n)
# (models.threshold.short_stretch_margin); chosen on tuning data only (README: tuning procedure)
DEFAULT_FULL_STRETCH_READINGS = 1200
# for new models: a window's error is the mean of its largest channel errors, half of the channels
# (rounded up), so a fault on a few channels is not averaged away by the quiet ones; a network config
# without score_channels (older checkpoints) averages every channel. Chosen on tuning data only.
DEFAULT_SCORE_CHANNEL_SHARE = 0.5
