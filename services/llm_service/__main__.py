import sys

from llm_service.cli import main

sys.exit(main())
