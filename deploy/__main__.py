"""Entry point of the application: ``python -m deploy`` from the repository, ``python deploy``, or the MAP's
``python3 -u /opt/holoscan/app`` (the folder run as a script)."""
import logging

if __package__:  # python -m deploy
    from .app import P53HccApp
else:  # the folder run as a script: its own folder is on sys.path
    from app import P53HccApp

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    P53HccApp().run()
