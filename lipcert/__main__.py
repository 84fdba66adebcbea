from __future__ import annotations

from lipcert.cli import main

main()
