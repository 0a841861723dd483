import sys
from pathlib import Path

# Reuse the token integration tests' API client and container helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "token"))
