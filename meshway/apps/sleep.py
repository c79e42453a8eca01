"""`python -m meshway.apps.sleep`: do nothing until terminated (Istio's `sleep`/`curl` sample pods,
whose only job is to be a place to run `curl` from). SIGTERM ends it at once."""
from __future__ import annotations

import signal
import sys


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
