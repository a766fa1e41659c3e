"""`python -m pkgloader_client`: the same as the `pkgloader-client` command."""

import sys

from pkgloader_client._cli import main

sys.exit(main())
