"""What the Ray benchmarks share (free ports: ``ray_cluster.free_ports``; joining a loopback
cluster: ``ray_cluster.join``, which keeps Ray on 127.0.0.1 by itself).

Import it before ``ray``: Ray reads the variable below when it is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

