"""python3 -m trainbus: the same as trainbus-callback (see trainbus.cli)."""
import sys

from .cli import main

sys.exit(main())
