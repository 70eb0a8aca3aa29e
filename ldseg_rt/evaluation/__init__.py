"""Evaluation: segmentation and distribution metrics, scoring a Segmenter on held-out
synthetic data, and figures (matplotlib is imported only here)."""
