"""Container healthcheck: exit 0 when GET /ready on the local service answers 200, else 1. Docker gives it
10 s (HEALTHCHECK --timeout): on a busy host starting this Python alone took over 3 s, the earlier limit,
and a serving container was marked unhealthy."""

import os
import sys
import urllib.error
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('BRIDLE_PORT', '8000')}/ready"
try:
    with urllib.request.urlopen(url, timeout=8) as response:
        sys.exit(0 if response.status == 200 else 1)
except (urllib.error.URLError, OSError) as e:
    print(f"not ready: {e}")
    sys.exit(1)
