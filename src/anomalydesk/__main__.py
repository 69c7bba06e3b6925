"""`python -m anomalydesk …`: the `anomalydesk` command (`anomalydesk.cli`)."""

import sys

from anomalydesk.cli import main

sys.exit(main())
