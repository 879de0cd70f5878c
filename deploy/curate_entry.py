"""The ``curate`` command line as a file, for launchers that run a script (``spark-submit``).

Running ``pipelines/__main__.py`` directly would put ``curation/`` first on ``sys.path``, where its
modules would shadow others; this file puts the project root there instead.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.app import main

main()
