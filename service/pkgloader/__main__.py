import sys

from pkgloader.cli import main

sys.exit(main())
