import sys
from pathlib import Path

# The fake KFP server module sits beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
