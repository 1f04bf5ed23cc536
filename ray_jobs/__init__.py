"""Entrypoints that run *inside* Ray jobs (submitted by mlflow_finops.retrain)."""
