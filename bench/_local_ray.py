"""What the Ray benchmarks share: a cluster kept on loopback (free ports: ``ray_cluster.free_ports``).

Import it before ``ray``: Ray reads the variable below when it is imported (without
it Ray advertises the host's own IP and a local multi-node cluster hangs).
"""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

