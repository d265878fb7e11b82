import sys

from waferflow.cli import main

sys.exit(main())
