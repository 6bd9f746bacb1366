from pathlib import Path

from common.cli import main_for

main_for(Path(__file__).parent.name)
