import sys

from mura_aug.cli import main

sys.exit(main())
