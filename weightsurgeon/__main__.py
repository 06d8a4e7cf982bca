"""`python -m weightsurgeon` == `surgeon`."""
from weightsurgeon.cli import main

main()
