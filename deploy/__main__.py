"""Entry point of the packaged application (``python deploy`` / the MAP's ``python3 -u /opt/holoscan/app``)."""
import logging

from app import P53HccApp

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    P53HccApp().run()
