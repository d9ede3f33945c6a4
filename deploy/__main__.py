"""Entry point of the application: ``python -m deploy`` from the repository, ``python deploy``, or the MAP's
``python3 -u /opt/holoscan/app`` (the folder run as a script)."""
import logging
import sys

if __package__:  # python -m deploy
    from .app import main
else:  # the folder run as a script: its own folder is on sys.path
    from app import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
