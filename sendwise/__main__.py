import sys

from sendwise.cli import main

sys.exit(main())
