"""`python -m loraplex.loadgen` is `loraplex bench`."""

from .cli import main

main()
