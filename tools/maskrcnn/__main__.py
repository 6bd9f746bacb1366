from common.cli import main_for

main_for("maskrcnn")
