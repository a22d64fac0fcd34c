"""Fit, evaluate and export the classifier head."""
