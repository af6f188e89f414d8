"""`python -m databank_server --host 127.0.0.1 --port 8000`: serve the local Data Bank."""

from __future__ import annotations

import sys

from databank_server.server import main

if __name__ == "__main__":
    sys.exit(main())
