"""``python -m convrl.meta_eval meta-eval FILE_OR_FOLDER``."""
import sys

from convrl.meta_eval.cli import main

sys.exit(main())
