"""Prediction: input checks, tiled inference, post-processing (torch, numpy; no Qt)."""
