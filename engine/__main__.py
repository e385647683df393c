import sys

from engine.orchestration.cli import main

sys.exit(main())
