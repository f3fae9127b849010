"""The whole pipeline on one machine: moto server as AWS, the real worker and handlers."""

import sys
from pathlib import Path

# devstack runs the real handlers, and its drills read their functions' rules (the standby's
# tags, the user notice's signature): it imports them as Lambda does, from the bundle's root
# (CodeUri: functions/).
_BUNDLE = str(Path(__file__).resolve().parents[1] / "functions")
if _BUNDLE not in sys.path:
    sys.path.append(_BUNDLE)
