import sys

from medclf.cli import main

sys.exit(main())
