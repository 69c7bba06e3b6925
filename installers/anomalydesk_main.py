"""Entry point of the frozen (PyInstaller) AnomalyDesk: the same `anomalydesk` command as the pip install."""

import sys

from anomalydesk.cli import main

if __name__ == "__main__":
    sys.exit(main())
