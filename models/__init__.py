"""Anomaly models: training, persistence with integrity checks, and scoring handlers."""
