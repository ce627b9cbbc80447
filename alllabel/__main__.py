import sys

from alllabel.cli import main

sys.exit(main())
