"""python -m llmbatch"""

from llmbatch.cli import main

main()
