"""What sample() does around the networks: image checks and preprocessing, and the
aggregation of samples into probabilities, consensus and uncertainty."""
