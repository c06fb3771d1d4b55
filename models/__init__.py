"""driftline models: LSTM autoencoder, preprocessing, training, thresholds, checkpoints and registry."""
