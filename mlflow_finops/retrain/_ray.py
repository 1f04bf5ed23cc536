"""Re-export of the Ray token helper under its old home, ``mlflow_finops.retrain.ray_auth_headers``."""

from ..ray_cluster import ray_auth_headers

__all__ = ["ray_auth_headers"]
