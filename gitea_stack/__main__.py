import sys

from gitea_stack.cli import main

sys.exit(main())
