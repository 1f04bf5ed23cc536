"""The README's screenshots, taken by the tests that check what they show.

    .venv/bin/python scripts/screenshots.py

docs/finops-page.png: the FinOps page of a real `mlflow server --app-name finops`
(tests/test_finops_app.py::test_finops_page_in_the_browser, headless Chromium; the test
asserts the figures and that the picture is not blank before it is kept).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOTS = {"docs/finops-page.png": "tests/test_finops_app.py::test_finops_page_in_the_browser"}


def main() -> int:
    for rel, test in SHOTS.items():
        out = ROOT / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rs", test],
                             cwd=ROOT, env={**os.environ, "FINOPS_PAGE_SCREENSHOT": str(out)})
        if rc != 0:
            return rc
        if not out.exists() or out.stat().st_mtime < started:
            print(f"{rel} not taken (the test was skipped: see its reason above)", file=sys.stderr)
            return 1
        print(f"wrote {rel} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
