"""python -m llmbatch"""

from llmbatch.app.cli import main

main()
