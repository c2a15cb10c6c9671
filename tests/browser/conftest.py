"""The browser check runs only when asked (``make browser-check``): it needs Chromium."""

import os

if not os.environ.get("STEERLENS_BROWSER_CHECK"):
    collect_ignore_glob = ["test_*.py"]
