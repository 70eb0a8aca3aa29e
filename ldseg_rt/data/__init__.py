"""Synthetic data generators (phantoms for LDSeg, ambiguous lesions for the pixel-space
family) and the bundled example image. Used by training, evaluation and tests, never by the
runtime."""
