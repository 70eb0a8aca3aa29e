"""Training, kept apart from the runtime: objectives and the trainer, training data,
decoder calibration and sampler tuning. Nothing in the runtime imports it."""
